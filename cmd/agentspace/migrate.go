package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/storage"
)

// migrateSQLiteToPostgres copies an installation's SQLite database into an
// empty PostgreSQL database: agentspace migrate-sqlite-to-postgres --from
// DB_PATH --to DATABASE_URL. The server must be stopped while it runs.
func migrateSQLiteToPostgres(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate-sqlite-to-postgres", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "the SQLite database file to copy (DB_PATH; stop the server first)")
	to := fs.String("to", "", "the empty PostgreSQL database to copy into (postgres://user:password@host:port/dbname)")
	sample := fs.Int("sample", 1000, "how many events to compare column by column after the copy")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: agentspace migrate-sqlite-to-postgres --from DB_PATH --to DATABASE_URL

Copies every table of a stopped AgentSpace's SQLite database into an empty
PostgreSQL database (created with CREATE DATABASE; the schema is created
here), keeps the stream position, and verifies row counts and a sample of
events. Then start AgentSpace with DATABASE_URL set and DB_PATH unchanged:
the signing key and media stay in the SQLite database's directory.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (use --from and --to)", fs.Arg(0))
	}
	if *from == "" || *to == "" {
		fs.Usage()
		return errors.New("--from and --to are required")
	}
	target := &config.Config{Database: config.DatabaseConfig{URL: *to}}
	if !target.UsesPostgres() {
		return errors.New("--to must be a postgres:// or postgresql:// URL")
	}
	shownURL := target.Redacted().Database.URL
	if st, err := os.Stat(*from); err != nil {
		return fmt.Errorf("--from: %w", err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("--from: %s is not a file", *from)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	src, err := storage.Open(ctx, storage.Options{SQLitePath: *from})
	if err != nil {
		return fmt.Errorf("opening %s: %w", *from, err)
	}
	defer src.Close()
	dst, err := storage.Open(ctx, storage.Options{PostgresURL: *to})
	if err != nil {
		return fmt.Errorf("opening %s: %w", shownURL, err)
	}
	defer dst.Close()

	fmt.Fprintf(stdout, "copying %s → %s\n", *from, shownURL)
	rep, err := storage.CopySQLiteToPostgres(ctx, src, dst, storage.CopyOptions{
		SampleEvents: *sample,
		Progress: func(table string, rows int64) {
			fmt.Fprintf(stdout, "  %-34s %10d rows\n", table, rows)
		},
	})
	if err != nil {
		if errors.Is(err, storage.ErrTargetNotEmpty) {
			return fmt.Errorf("%w (nothing was copied)", err)
		}
		if rep == nil {
			return fmt.Errorf("%w (the target was left unchanged)", err)
		}
		return err
	}

	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "table\tsource rows\ttarget rows\t")
	for _, t := range rep.Tables {
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", t.Table, t.Source, t.Target)
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t\n", rep.Rows(), rep.Rows())
	tw.Flush()
	fmt.Fprintf(stdout, "\nschema version %d, stream position %d\n", rep.SchemaVersion, rep.StreamPos)
	fmt.Fprintf(stdout, "verified: row counts of %d tables match; %d sampled events identical in every column\n",
		len(rep.Tables), rep.SampledEvents)
	fmt.Fprintf(stdout, "copied in %s, verified in %s\n", rep.CopyDuration.Round(time.Millisecond), rep.VerifyDuration.Round(time.Millisecond))

	dir, _ := filepath.Abs(filepath.Dir(*from))
	fmt.Fprintf(stdout, "\nNext: start AgentSpace with DATABASE_URL=%s and DB_PATH=%s\n", shownURL, *from)
	fmt.Fprintf(stdout, "(the signing key %s and uploaded media (MEDIA_PATH, by default %s) are not in\n the database: keep DB_PATH pointing at that directory, or copy both along)\n",
		filepath.Join(dir, "signing.key"), filepath.Join(dir, "media"))
	return nil
}
