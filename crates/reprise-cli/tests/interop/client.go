// Command client is the interop suite's Go crypto/tls client: a chain of sequential connections,
// each offering the session the previous one left, each closed as -mode says. -connect takes
// one address, or several separated by commas: connection N goes to the Nth, round-robin.
// It prints one line per connection: "N client=yes|no server=yes|no|?", where client is what
// crypto/tls reports and server what the built-in responder's body says ("?" without one).
// Only the standard library is used, so it builds without a network.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	connect := flag.String("connect", "", "host:port of the server, or several, comma-separated")
	serverName := flag.String("servername", "localhost", "name sent and verified")
	caFile := flag.String("ca", "", "PEM file of trusted CAs; empty: no verification")
	version := flag.String("tls", "1.3", "1.2 or 1.3")
	mode := flag.String("mode", "notify", "how each connection ends: notify, fin, rst or server")
	count := flag.Int("count", 6, "connections in the chain")
	flag.Parse()

	cfg := &tls.Config{
		ServerName:         *serverName,
		ClientSessionCache: tls.NewLRUClientSessionCache(4),
	}
	switch *version {
	case "1.2":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	case "1.3":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	default:
		fail("unknown -tls %q", *version)
	}
	if *caFile == "" {
		cfg.InsecureSkipVerify = true
	} else {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fail("%v", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			fail("no certificate in %s", *caFile)
		}
	}
	switch *mode {
	case "notify", "fin", "rst", "server":
	default:
		fail("unknown -mode %q", *mode)
	}
	addrs := strings.Split(*connect, ",")
	for i := 1; i <= *count; i++ {
		client, server := one(addrs[(i-1)%len(addrs)], cfg, *mode)
		fmt.Printf("%d client=%s server=%s\n", i, yesNo(client), server)
	}
}

func one(addr string, cfg *tls.Config, mode string) (bool, string) {
	raw, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		fail("connect: %v", err)
	}
	if err := raw.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		fail("deadline: %v", err)
	}
	conn := tls.Client(raw, cfg)
	if err := conn.Handshake(); err != nil {
		fail("handshake: %v", err)
	}
	header := ""
	if mode == "server" {
		header = "Connection: close\r\n"
	}
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\n%s\r\n", cfg.ServerName, header); err != nil {
		fail("write: %v", err)
	}
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, nil)
	if err != nil {
		fail("response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		fail("body: status %d, %v", resp.StatusCode, err)
	}
	resumed := conn.ConnectionState().DidResume
	switch mode {
	case "notify":
		// close_notify, then FIN.
		err = conn.Close()
	case "fin":
		err = raw.Close()
	case "rst":
		if err = raw.(*net.TCPConn).SetLinger(0); err == nil {
			err = raw.Close()
		}
	case "server":
		// The server closes: read to its close_notify, then close.
		if _, err = io.Copy(io.Discard, reader); err == nil {
			conn.Close()
		}
	}
	if err != nil {
		fail("close (%s): %v", mode, err)
	}
	return resumed, bodySays(string(body))
}

func bodySays(body string) string {
	switch {
	case strings.Contains(body, "resumed: yes"):
		return "yes"
	case strings.Contains(body, "resumed: no"):
		return "no"
	}
	return "?"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "client.go: "+format+"\n", args...)
	os.Exit(1)
}
