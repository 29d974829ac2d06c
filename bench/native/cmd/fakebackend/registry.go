package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// heartbeatInterval is FileRegistrar's default.
const heartbeatInterval = 2 * time.Second

// record is the file registry's record of an instance
// (src/voxmesh/discovery/file.py): the InstanceInfo fields and heartbeat_unix.
type record struct {
	InstanceID    string            `json:"instance_id"`
	Pool          string            `json:"pool"`
	Model         string            `json:"model"`
	Address       string            `json:"address"`
	Port          int               `json:"port"`
	CapacityClass string            `json:"capacity_class"`
	GPUType       string            `json:"gpu_type"`
	Region        string            `json:"region"`
	MaxStreams    int               `json:"max_streams"`
	MetricsPort   int               `json:"metrics_port"`
	Draining      bool              `json:"draining"`
	Meta          map[string]string `json:"meta"`
	HeartbeatUnix float64           `json:"heartbeat_unix"`
}

// registrar keeps one record in a file registry directory fresh, like
// FileRegistrar: written atomically (a temporary file renamed over the old
// one) and rewritten every heartbeatInterval. The double has no metrics port,
// so, like the Python double, it writes no file_sd target.
type registrar struct {
	path string

	mu     sync.Mutex
	rec    record
	stop   chan struct{}
	beaten sync.WaitGroup
}

// register writes the record and starts the heartbeat.
func register(dir string, rec record) (*registrar, error) {
	r := &registrar{path: filepath.Join(dir, rec.InstanceID+".json"), rec: rec, stop: make(chan struct{})}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := r.write(); err != nil {
		return nil, err
	}
	r.beaten.Add(1)
	go r.beat()
	return r, nil
}

func (r *registrar) beat() {
	defer r.beaten.Done()
	ticker := time.NewTicker(heartbeatInterval)
	defer ticker.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-ticker.C:
			if err := r.write(); err != nil {
				logf("heartbeat write to %s failed: %v", r.path, err)
			}
		}
	}
}

// setDraining rewrites the record with draining true.
func (r *registrar) setDraining() error {
	r.mu.Lock()
	r.rec.Draining = true
	r.mu.Unlock()
	return r.write()
}

// deregister stops the heartbeat and removes the record.
func (r *registrar) deregister() error {
	close(r.stop)
	r.beaten.Wait()
	if err := os.Remove(r.path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// write replaces the record with one with a fresh heartbeat.
func (r *registrar) write() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rec.HeartbeatUnix = float64(time.Now().UnixNano()) / 1e9
	data, err := json.Marshal(r.rec)
	if err != nil {
		return err
	}
	dir, name := filepath.Split(r.path)
	tmp, err := os.CreateTemp(dir, "."+name+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	// CreateTemp makes the file 0600; other readers of the registry need 0644.
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), r.path)
}
