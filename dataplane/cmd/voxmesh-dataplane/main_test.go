package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// started runs the command with args and returns its port, a channel of its
// exit code and its signal channel.
func started(t *testing.T, args ...string) (int, <-chan int, chan<- os.Signal) {
	t.Helper()
	out, in := io.Pipe()
	signals := make(chan os.Signal, 1)
	code := make(chan int, 1)
	go func() {
		code <- run(args, in, io.Discard, signals)
		in.Close()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	go func() { _, _ = io.Copy(io.Discard, out) }() // the rest is not read
	if err != nil {
		t.Fatalf("no PORT line: %v (exit %d)", err, <-code)
	}
	var port int
	if _, err := fmt.Sscanf(line, "PORT %d\n", &port); err != nil || port == 0 {
		t.Fatalf("first line %q", line)
	}
	return port, code, signals
}

func stop(t *testing.T, code <-chan int, signals chan<- os.Signal) {
	t.Helper()
	signals <- syscall.SIGTERM
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("exit code %d after SIGTERM", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

func TestServesUntilSIGTERM(t *testing.T) {
	// No control plane and no forward upstream: it serves anyway.
	port, code, signals := started(t, "--control", "unix:/nonexistent/c.sock", "--forward", "unix:/nonexistent/f.sock",
		"--drain-timeout", "1s")
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	stop(t, code, signals)
}

func TestExitsWhenStdinEnds(t *testing.T) {
	router, pipe := io.Pipe() // the router's end of the data path's stdin
	stdin = router
	t.Cleanup(func() { stdin = os.Stdin })
	_, code, _ := started(t, "--control", "unix:/nonexistent/c.sock", "--forward", "unix:/nonexistent/f.sock",
		"--drain-timeout", "1s", "--exit-on-stdin-eof")
	select {
	case c := <-code:
		t.Fatalf("exited (%d) while stdin was open", c)
	default:
	}
	pipe.Close() // the router died
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("exit code %d after stdin ended", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after stdin ended")
	}
}

func TestABusyListenAddressExits3WithItsReasonOnStdout(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	var stdout strings.Builder
	code := run([]string{"--listen", busy.Addr().String(), "--control", "unix:/nonexistent/c.sock",
		"--forward", "unix:/nonexistent/f.sock"}, &stdout, io.Discard, nil)
	if code != exitListenFailed || !strings.HasPrefix(stdout.String(), listenFailedPrefix) ||
		!strings.Contains(stdout.String(), "address already in use") {
		t.Fatalf("exit %d, stdout %q", code, stdout.String())
	}
	stdout.Reset() // an address that is not one: the same
	code = run([]string{"--listen", "256.0.0.1:0", "--control", "unix:/c", "--forward", "unix:/f"},
		&stdout, io.Discard, nil)
	if code != exitListenFailed || !strings.HasPrefix(stdout.String(), listenFailedPrefix) {
		t.Fatalf("exit %d, stdout %q", code, stdout.String())
	}
}

func TestBadFlagsExit2NamingTheFlag(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(key, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--forward", "unix:/f"}, "--control"},
		{[]string{"--control", "unix:/c"}, "--forward"},
		{[]string{"--control", "unix:/c", "--forward", "unix:/f", "--tls-cert", key}, "--tls-key"},
		{[]string{"--control", "unix:/c", "--forward", "unix:/f", "--tls-cert", key, "--tls-key", key}, "--tls-cert"},
		{[]string{"--control", "unix:/c", "--forward", "unix:/f", "--idle-timeout", "0s"}, "--idle-timeout"},
		{[]string{"--control", "unix:/c", "--forward", "unix:/f", "--control-batch-wait", "-1ms"}, "--control-batch-wait"},
	} {
		var stderr strings.Builder
		if got := run(c.args, io.Discard, &stderr, nil); got != 2 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: exit %d, %q", c.args, got, stderr.String())
		}
	}
}

func TestServesMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := certificate(t, nil, nil, "ca")
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	srv, srvKey := certificate(t, ca, caKey, "server")
	writePEM(t, filepath.Join(dir, "cert.pem"), "CERTIFICATE", srv.Raw)
	writePEM(t, filepath.Join(dir, "key.pem"), "PRIVATE KEY", marshalKey(t, srvKey))
	client, clientKey := certificate(t, ca, caKey, "client")

	port, code, signals := started(t, "--control", "unix:/nonexistent/c.sock", "--forward", "unix:/nonexistent/f.sock",
		"--tls-cert", filepath.Join(dir, "cert.pem"), "--tls-key", filepath.Join(dir, "key.pem"),
		"--tls-client-ca", filepath.Join(dir, "ca.pem"))
	defer stop(t, code, signals)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{{Certificate: [][]byte{client.Raw}, PrivateKey: clientKey}}}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Errorf("ALPN %q", p)
	}
	conn.Close()

	cfg.Certificates = nil
	conn, err = tls.Dial("tcp", addr, cfg)
	if err == nil {
		// TLS 1.3: the server's refusal arrives after the client's handshake.
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without a client certificate: %v", err)
	}
}

// certificate makes an ECDSA certificate for localhost signed by parent (self-signed
// when nil); a CA when parent is nil.
func certificate(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func marshalKey(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
