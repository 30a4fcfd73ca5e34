// Command ferretdb runs FerretDB v1.24 for the local stack through its
// embeddable package.
//
// `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` builds, but the
// binary panics at start-up: the module zip lacks the generated
// build/version/version.txt that the upstream main package requires. The
// embeddable package skips that check, so this small main serves instead. It
// has no telemetry reporter at all, and it locks telemetry off in its state.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listenAddr := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on for MongoDB wire protocol clients")
	handler := flag.String("handler", "sqlite", "storage backend: sqlite or postgresql")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite backend: file: URI of the directory that holds one database file per MongoDB database")
	postgresqlURL := flag.String("postgresql-url", "", "PostgreSQL backend: connection URL, for example postgres://127.0.0.1:5433/ferretdb")
	logLevel := flag.String("log-level", "info", "minimum log level: debug, info, warn or error")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: invalid --log-level %q: %v\n", *logLevel, err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	config := ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: *listenAddr},
		Logger:   logger,
	}

	switch *handler {
	case "sqlite":
		config.Handler = "sqlite"
		config.SQLiteURL = *sqliteURL
	case "postgresql", "pg":
		if *postgresqlURL == "" {
			fmt.Fprintln(os.Stderr, "ferretdb: --postgresql-url is required with --handler=postgresql")
			os.Exit(2)
		}
		config.Handler = "postgresql"
		config.PostgreSQLURL = *postgresqlURL
	default:
		fmt.Fprintf(os.Stderr, "ferretdb: invalid --handler %q: expected sqlite or postgresql\n", *handler)
		os.Exit(2)
	}

	server, err := ferretdb.New(&config)
	if err != nil {
		logger.Error("ferretdb failed to start", "handler", config.Handler, "error", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	logger.Info("ferretdb started", "handler", config.Handler, "listen_addr", *listenAddr)

	// Run returns once ctx is cancelled and every connection and the backend are closed.
	if err := server.Run(ctx); err != nil {
		logger.Error("ferretdb stopped with an error", "error", err)
		os.Exit(1)
	}

	logger.Info("ferretdb stopped")
}
