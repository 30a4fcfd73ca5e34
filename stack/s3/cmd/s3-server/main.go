// Command s3-server serves an S3-compatible API for the local stack, so the
// gateway's S3 blob store is tested against a real HTTP S3 server.
//
// It runs gofakes3 v1.2.0 on a bbolt file. Objects survive restarts, and bbolt
// syncs every write to disk before the PUT returns. Requests are
// accepted whatever their signature: gofakes3 parses SigV4-signed requests but
// checks neither the signature nor the access key, so a wrong secret goes
// unnoticed here and only a real service would reject it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
	bolt "go.etcd.io/bbolt"
)

// shutdownTimeout bounds how long in-flight requests may finish after SIGTERM.
const shutdownTimeout = 10 * time.Second

func main() {
	listenAddr := flag.String("listen-addr", "127.0.0.1:9000", "TCP address to listen on for S3 HTTP requests")
	dbPath := flag.String("db", "s3.db", "bbolt file that keeps buckets and objects, created when missing")
	buckets := flag.String("buckets", "", "comma-separated buckets to create at start when missing")
	logLevel := flag.String("log-level", "info", "minimum log level: debug, info, warn or error; debug logs every request")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "s3-server: invalid --log-level %q: %v\n", *logLevel, err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	if err := run(logger, *listenAddr, *dbPath, *buckets); err != nil {
		logger.Error("s3-server stopped with an error", "error", err)
		os.Exit(1)
	}
	logger.Info("s3-server stopped")
}

func run(logger *slog.Logger, listenAddr, dbPath, buckets string) error {
	// bbolt locks the file, so a second server on the same file fails here after
	// the timeout instead of corrupting it.
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("opening %s: %w", dbPath, err)
	}
	defer db.Close()

	backend := s3bolt.New(db)
	for _, bucket := range strings.Split(buckets, ",") {
		bucket = strings.TrimSpace(bucket)
		if bucket == "" {
			continue
		}
		if err := backend.CreateBucket(bucket); err != nil && !gofakes3.IsAlreadyExists(err) {
			return fmt.Errorf("creating bucket %q: %w", bucket, err)
		}
	}

	faker := gofakes3.New(backend,
		gofakes3.WithLogger(slogAdapter{logger}),
		gofakes3.WithIntegrityCheck(true),
	)

	listener, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           faker.Server(),
		ReadHeaderTimeout: 30 * time.Second,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	logger.Info("s3-server started", "listen_addr", listener.Addr().String(), "db", dbPath, "buckets", buckets)

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := server.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("draining requests: %w", err)
	}
	return nil
}

// slogAdapter passes gofakes3's messages to slog. Its INFO messages describe
// single requests, so they go out at debug level.
type slogAdapter struct {
	logger *slog.Logger
}

func (a slogAdapter) Print(level gofakes3.LogLevel, v ...interface{}) {
	message := fmt.Sprint(v...)
	switch level {
	case gofakes3.LogErr:
		a.logger.Error(message)
	case gofakes3.LogWarn:
		a.logger.Warn(message)
	default:
		a.logger.Debug(message)
	}
}
