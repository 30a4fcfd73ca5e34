// Command mongo-ping sends the MongoDB `ping` command to a server and exits 0
// only when the server returns ok: 1. The stack scripts use it to tell that
// FerretDB serves the wire protocol, which an open TCP port alone does not show.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

func main() {
	uri := flag.String("uri", "mongodb://127.0.0.1:27017/", "MongoDB connection string")
	timeout := flag.Duration("timeout", 3*time.Second, "deadline for connecting and for the ping round trip")
	quiet := flag.Bool("quiet", false, "print nothing, only set the exit status")
	flag.Parse()

	if err := ping(*uri, *timeout); err != nil {
		if !*quiet {
			fmt.Fprintf(os.Stderr, "mongo-ping: %s: %v\n", *uri, err)
		}
		os.Exit(1)
	}

	if !*quiet {
		fmt.Printf("mongo-ping: %s: ok\n", *uri)
	}
}

func ping(uri string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	opts := options.Client().ApplyURI(uri).SetServerSelectionTimeout(timeout).SetConnectTimeout(timeout)
	client, err := mongo.Connect(ctx, opts)
	if err != nil {
		return err
	}
	defer client.Disconnect(context.Background())

	var reply bson.M
	if err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "ping", Value: 1}}).Decode(&reply); err != nil {
		return err
	}

	// Servers encode ok as a double or as an integer, so accept each.
	switch ok := reply["ok"].(type) {
	case float64:
		if ok == 1 {
			return nil
		}
	case int32:
		if ok == 1 {
			return nil
		}
	case int64:
		if ok == 1 {
			return nil
		}
	}

	return fmt.Errorf("ping returned %v", reply)
}
