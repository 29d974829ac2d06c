package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// LoadTLS returns the credentials of a public endpoint that serves TLS with the
// PEM certificate and key in certFile and keyFile and, when clientCAFile is not
// empty, requires clients to present a certificate that chains to a CA in it
// (mutual TLS). It returns nil credentials when no file is given. Errors name the
// flag at fault.
//
// The files follow rotation as the Python router's do (src/voxmesh/rpc/tls.py):
// every new handshake looks at their modification times and sizes; when they
// changed (cert-manager, a Nomad template rendered from Vault, certbot renew),
// the new files are checked and used for new connections, and connections
// already open keep theirs. A half-written or mismatched pair is refused with a
// warning on logger and the previous one stays in use.
func LoadTLS(certFile, keyFile, clientCAFile string, logger *slog.Logger) (credentials.TransportCredentials, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("--tls-cert and --tls-key go together: give both or neither")
	}
	if certFile == "" {
		if clientCAFile != "" {
			return nil, errors.New("--tls-client-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	r, err := newRotatingTLS(certFile, keyFile, clientCAFile, logger)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: r.config}), nil
}

// newRotatingTLS loads the files a first time; an error names the flag at fault.
func newRotatingTLS(certFile, keyFile, caFile string, logger *slog.Logger) (*rotatingTLS, error) {
	r := &rotatingTLS{certFile: certFile, keyFile: keyFile, caFile: caFile, logger: logger}
	r.stamp = r.stamps()
	cfg, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cfg = cfg
	return r, nil
}

// fileStamp tells a file's versions apart.
type fileStamp struct {
	modified time.Time
	size     int64
}

// rotatingTLS is the TLS configuration of the endpoint, loaded again from its
// files when they change.
type rotatingTLS struct {
	certFile, keyFile, caFile string
	logger                    *slog.Logger

	mu    sync.Mutex
	stamp [3]fileStamp
	cfg   *tls.Config
}

// stamps reads the files' stamps (a zero stamp for a file it cannot stat).
func (r *rotatingTLS) stamps() [3]fileStamp {
	var out [3]fileStamp
	for i, path := range []string{r.certFile, r.keyFile, r.caFile} {
		if path == "" {
			continue
		}
		if info, err := os.Stat(path); err == nil {
			out[i] = fileStamp{info.ModTime(), info.Size()}
		}
	}
	return out
}

// load reads and checks the files.
func (r *rotatingTLS) load() (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", r.certFile, r.keyFile, err)
	}
	// The configuration a handshake gets replaces the one gRPC's credentials set up,
	// ALPN included: HTTP/2 must be offered here again.
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
	}
	if r.caFile != "" {
		pem, err := os.ReadFile(r.caFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-client-ca %s: no PEM certificate in it", r.caFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// config is the configuration of one new connection: the files' current one,
// or the previous one while the files on disk are not a usable set.
func (r *rotatingTLS) config(*tls.ClientHelloInfo) (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp := r.stamps()
	if stamp == r.stamp {
		return r.cfg, nil
	}
	r.stamp = stamp // a set refused now is tried again when it changes again
	cfg, err := r.load()
	if err != nil {
		r.logger.Warn("the rotated TLS files are not usable; the previous ones stay in use", "err", err)
		return r.cfg, nil
	}
	r.logger.Info("TLS files rotated: new connections use them")
	r.cfg = cfg
	return r.cfg, nil
}
