"""gRPC plumbing shared by every service: server bootstrap and status mapping."""
