package server

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// selfSigned returns a PEM certificate and key for name.
func selfSigned(t *testing.T, name string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// write puts data in path with a modification time of its own.
func write(t *testing.T, path string, data []byte, modified time.Time) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, modified, modified); err != nil {
		t.Fatal(err)
	}
}

// served is the leaf certificate a new connection would get.
func served(t *testing.T, r *rotatingTLS) []byte {
	t.Helper()
	cfg, err := r.config(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Certificates[0].Certificate[0]
}

func TestRotatedFilesServeNewConnectionsAndABrokenPairIsRefused(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.pem"), filepath.Join(dir, "tls.key")
	firstCert, firstKey := selfSigned(t, "first")
	start := time.Now().Add(-time.Minute)
	write(t, certFile, firstCert, start)
	write(t, keyFile, firstKey, start)
	r, err := newRotatingTLS(certFile, keyFile, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	first := served(t, r)

	// A rotation: the next connection gets the new pair.
	nextCert, nextKey := selfSigned(t, "next")
	write(t, certFile, nextCert, start.Add(time.Second))
	write(t, keyFile, nextKey, start.Add(time.Second))
	next := served(t, r)
	if bytes.Equal(next, first) {
		t.Fatal("the rotated pair is not served")
	}

	// Half a rotation (a new certificate, the old key): refused, the pair before stays.
	otherCert, _ := selfSigned(t, "other")
	write(t, certFile, otherCert, start.Add(2*time.Second))
	if got := served(t, r); !bytes.Equal(got, next) {
		t.Fatal("a mismatched pair replaced a good one")
	}

	// The rest of it arrives: served.
	write(t, certFile, firstCert, start.Add(3*time.Second))
	write(t, keyFile, firstKey, start.Add(3*time.Second))
	if got := served(t, r); !bytes.Equal(got, first) {
		t.Fatal("the completed rotation is not served")
	}
}
