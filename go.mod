module github.com/voxmesh/voxmesh

go 1.21
