// Package testdb runs a package's tests on every storage engine: once on
// SQLite, then once more on a real PostgreSQL server, with a fresh database
// per test. A package opts in with a TestMain calling Main, and its test
// helpers ask Postgres and NewPostgres which database to open:
//
//	func TestMain(m *testing.M) { testdb.Main(m, migrate) }
//
//	if testdb.Postgres() {
//		cfg.Database.URL = testdb.NewPostgres(t)
//	}
//
// The PostgreSQL server is postgres://postgres@127.0.0.1:5432 (trust auth)
// unless AGENTSPACE_TEST_POSTGRES names another base URL (of a role that may
// create databases); AGENTSPACE_TEST_POSTGRES=off skips the PostgreSQL pass.
// An unreachable server fails the run when CI is set and is skipped with a
// loud message otherwise.
//
// This package imports no AgentSpace package, so storage's own tests can use it.
package testdb

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq" // PostgreSQL driver
)

// Environment variables.
const (
	// EngineEnv selects the engine of the current test process: "postgres"
	// in the second pass that Main starts; unset (SQLite) otherwise.
	EngineEnv = "AGENTSPACE_TEST_ENGINE"
	// PostgresEnv overrides the PostgreSQL base URL; "off" disables the pass.
	PostgresEnv = "AGENTSPACE_TEST_POSTGRES"
)

// DefaultPostgresURL is the server the PostgreSQL pass uses by default
// (.ci/run makes sure one answers there).
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// dbPrefix starts the name of every database this package creates; the
// creating process id follows, so leftovers of killed runs can be found.
const dbPrefix = "agentspace_test_"

// Postgres reports whether this test process runs the PostgreSQL pass.
func Postgres() bool { return os.Getenv(EngineEnv) == "postgres" }

// Engine names the engine of this test process: "postgres" or "sqlite".
func Engine() string {
	if Postgres() {
		return "postgres"
	}
	return "sqlite"
}

// BaseURL returns the PostgreSQL server URL to create test databases on, and
// false when PostgreSQL testing is switched off.
func BaseURL() (string, bool) {
	v := strings.TrimSpace(os.Getenv(PostgresEnv))
	switch strings.ToLower(v) {
	case "":
		return DefaultPostgresURL, true
	case "off", "0", "false", "no":
		return "", false
	}
	return v, true
}

// inCI reports whether the CI environment variable says we run in CI.
func inCI() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv("CI")))
	return v != "" && v != "0" && v != "false" && v != "no"
}

// Main is a TestMain body: it runs the tests on SQLite, then runs the same
// test binary again, with the same -test.* flags, with EngineEnv=postgres,
// and exits with the worse of the two results. In the PostgreSQL pass,
// prepare (if not nil) is run once on a new database, which then serves as
// the template of every database NewPostgres hands out: it typically
// applies the schema migrations, so that each test need not.
func Main(m *testing.M, prepare func(dbURL string) error) {
	flag.Parse()
	if os.Getenv(EngineEnv) != "" || boolFlag("test.fuzzworker") {
		if Postgres() {
			fmt.Fprintf(os.Stderr, "testdb: this pass runs every test on PostgreSQL (%s=postgres)\n", EngineEnv)
			inMain, prepareFn = true, prepare
		}
		code := m.Run()
		if pool != nil {
			pool.close()
		}
		sweepOwn()
		os.Exit(code)
	}
	code := m.Run()
	if boolFlag("test.list") || stringFlag("test.fuzz") != "" || (code != 0 && boolFlag("test.failfast")) {
		os.Exit(code)
	}
	os.Exit(max(code, postgresPass()))
}

// postgresPass re-runs this test binary on PostgreSQL and returns its exit code.
func postgresPass() int {
	base, on := BaseURL()
	if !on {
		loud(fmt.Sprintf("PostgreSQL pass SKIPPED: %s=off", PostgresEnv), false)
		return 0
	}
	if err := ping(base); err != nil {
		msg := fmt.Sprintf("cannot reach PostgreSQL at %s: %v", redact(base), err)
		if inCI() {
			loud("PostgreSQL pass FAILED (CI is set): "+msg, false)
			return 1
		}
		loud("PostgreSQL pass SKIPPED: "+msg+"\nStart a server (see .ci/run), point "+PostgresEnv+
			" at one, or set "+PostgresEnv+"=off to silence this.", true)
		return 0
	}
	sweepDead(base)
	args := make([]string, 0, len(os.Args)-1)
	for _, a := range os.Args[1:] {
		args = append(args, childArg(a))
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), EngineEnv+"=postgres")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		fmt.Fprintf(os.Stderr, "testdb: the PostgreSQL pass FAILED (%v)\n", err)
		return max(exit.ExitCode(), 1)
	default:
		fmt.Fprintf(os.Stderr, "testdb: cannot start the PostgreSQL pass: %v\n", err)
		return 1
	}
}

// childArg keeps a test flag for the second pass, except that files the
// first pass writes (profiles, traces, and the log of files and environment
// variables that go test's cache reads) get a ".postgres" suffix instead of
// being overwritten. Both passes run the same code, so the first pass's log
// covers the inputs of the second.
func childArg(a string) string {
	for _, f := range []string{"coverprofile", "cpuprofile", "memprofile", "blockprofile", "mutexprofile", "trace", "testlogfile"} {
		for _, p := range []string{"-test." + f + "=", "--test." + f + "="} {
			if v, ok := strings.CutPrefix(a, p); ok && v != "" {
				return p + v + ".postgres"
			}
		}
	}
	return a
}

func boolFlag(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() == "true"
}

func stringFlag(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// loud prints a framed message on stderr and, since `go test` hides the
// output of passing packages, on the terminal if there is one. With again
// it keeps `go test` from caching the run, so the message shows next time too.
func loud(msg string, again bool) {
	line := strings.Repeat("=", 78)
	text := fmt.Sprintf("%s\ntestdb (%s): %s\n%s\n", line, pkgName(), msg, line)
	fmt.Fprint(os.Stderr, text)
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		fmt.Fprint(tty, text)
		tty.Close()
	}
	if again {
		uncacheable()
	}
}

// uncacheable makes `go test` skip caching this result: it does not cache a
// run that looked at a file modified in the last few seconds.
func uncacheable() {
	p := filepath.Join(os.TempDir(), "agentspace-testdb-skip")
	if err := os.WriteFile(p, []byte(time.Now().String()), 0o600); err == nil {
		_, _ = os.Stat(p)
	}
}

func pkgName() string {
	return strings.TrimSuffix(filepath.Base(os.Args[0]), ".test")
}

// ping checks that the server answers and lets us in.
func ping(base string) error {
	db, err := sql.Open("postgres", base)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

var (
	adminOnce sync.Once
	admin     *sql.DB
	adminErr  error
	dbSeq     atomic.Int64

	// prepareFn is Main's prepare function; inMain says Main runs the
	// PostgreSQL pass (so databases may be made ahead and dropped behind).
	prepareFn func(dbURL string) error
	inMain    bool
	poolOnce  sync.Once
	pool      *dbPool
)

// adminDB is this process's connection pool to the server's base database.
func adminDB() (*sql.DB, error) {
	adminOnce.Do(func() {
		base, on := BaseURL()
		if !on {
			adminErr = fmt.Errorf("PostgreSQL testing is off (%s=off)", PostgresEnv)
			return
		}
		admin, adminErr = sql.Open("postgres", base)
		if adminErr == nil {
			admin.SetMaxOpenConns(droppers + 3)
		}
	})
	return admin, adminErr
}

// NewPostgres returns the URL of a database of its own for this test,
// dropped (its connections cut) when the test ends. Register it before
// anything that opens the database, so cleanup closes that first. Under
// Main the database is a copy of one that Main's prepare function set up
// (say, with the schema migrated), and is created ahead of time.
func NewPostgres(t testing.TB) string {
	t.Helper()
	var u string
	var err error
	if inMain {
		poolOnce.Do(func() { pool = startPool(prepareFn) })
		u, err = pool.take()
	} else {
		u, err = CreatePostgres()
	}
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(func() { dropLater(t, u) })
	return u
}

// NewEmptyPostgres is NewPostgres for a test that needs a database as
// CREATE DATABASE leaves it (say, to test the migrations themselves).
func NewEmptyPostgres(t testing.TB) string {
	t.Helper()
	u, err := CreatePostgres()
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(func() { dropLater(t, u) })
	return u
}

// dropLater drops a test's database, in the background under Main.
func dropLater(t testing.TB, u string) {
	if inMain && pool != nil && pool.dropAsync(u) {
		return
	}
	if err := DropPostgres(u); err != nil {
		t.Errorf("testdb: %v", err)
	}
}

var (
	reachOnce sync.Once
	reachErr  error
)

// RequirePostgres is NewEmptyPostgres for a test that needs PostgreSQL in
// whichever pass it runs (say, copying SQLite into PostgreSQL), including in
// packages without Main. It skips the test when PostgreSQL testing is off;
// when the server cannot be reached it fails in CI and skips otherwise.
func RequirePostgres(t testing.TB) string {
	t.Helper()
	base, on := BaseURL()
	if !on {
		t.Skipf("needs PostgreSQL; %s=off", PostgresEnv)
	}
	reachOnce.Do(func() { reachErr = ping(base) })
	if reachErr != nil {
		msg := fmt.Sprintf("needs PostgreSQL, cannot reach %s: %v", redact(base), reachErr)
		if inCI() {
			t.Fatal(msg + " (CI is set: failing)")
		}
		uncacheable()
		t.Skip(msg)
	}
	return NewEmptyPostgres(t)
}

// CreatePostgres creates an empty database and returns its URL; the caller
// drops it with DropPostgres. Tests use NewPostgres.
func CreatePostgres() (string, error) {
	return createFrom(context.Background(), "")
}

// createFrom creates a database, as a copy of template when one is named.
// Commits on it do not wait for the disk (synchronous_commit off): what
// they make visible, and when, is unchanged, and tests only run faster.
func createFrom(ctx context.Context, template string) (string, error) {
	db, err := adminDB()
	if err != nil {
		return "", err
	}
	base, _ := BaseURL()
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("parsing %s: %v", PostgresEnv, err)
	}
	name := fmt.Sprintf("%s%d_%d", dbPrefix, os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	q := "CREATE DATABASE " + name
	if template != "" {
		q += " TEMPLATE " + template
	}
	if _, err := db.ExecContext(ctx, q); err != nil {
		return "", fmt.Errorf("creating database %s on %s: %w", name, redact(base), err)
	}
	if _, err := db.ExecContext(ctx, "ALTER DATABASE "+name+" SET synchronous_commit = off"); err != nil {
		return "", fmt.Errorf("configuring database %s: %w", name, err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// DropPostgres drops a database made by CreatePostgres, ending any session still on it.
func DropPostgres(dbURL string) error {
	db, err := adminDB()
	if err != nil {
		return err
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		return err
	}
	name := strings.TrimPrefix(u.Path, "/")
	if !strings.HasPrefix(name, dbPrefix) {
		return fmt.Errorf("refusing to drop %q: not a test database", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping database %s: %w", name, err)
	}
	return nil
}

// dbPool makes test databases ahead of time, as copies of a prepared
// template, and drops used ones in the background, so that tests (which
// mostly run one after another) do not wait for either.
type dbPool struct {
	template    string // database name; "" when there is no prepare function
	templateURL string
	err         error // preparing the template failed
	ready       chan created
	drops       chan string
	cancel      context.CancelFunc // stops the maker, cutting a CREATE DATABASE short
	wg          sync.WaitGroup
}

// droppers is how many databases are dropped at once: a drop mostly waits
// for the disk, so a few in parallel empty the queue at the end much sooner.
const droppers = 3

type created struct {
	url string
	err error
}

func startPool(prepare func(string) error) *dbPool {
	p := &dbPool{ready: make(chan created, 1), drops: make(chan string, 4096)}
	if prepare != nil {
		u, err := CreatePostgres()
		if err == nil {
			if err = prepare(u); err != nil {
				err = fmt.Errorf("preparing the template database: %w", err)
			}
			parsed, _ := url.Parse(u)
			p.template, p.templateURL = strings.TrimPrefix(parsed.Path, "/"), u
		}
		if err != nil {
			p.err = err
			return p
		}
	}
	p.wg.Add(1 + droppers)
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { // maker: one database ahead in the channel, one in hand
		defer p.wg.Done()
		for ctx.Err() == nil {
			u, err := createFrom(ctx, p.template)
			if ctx.Err() != nil {
				if err == nil {
					_ = DropPostgres(u)
				}
				return
			}
			select {
			case p.ready <- created{u, err}:
			case <-ctx.Done():
				if err == nil {
					_ = DropPostgres(u)
				}
				return
			}
		}
	}()
	for range droppers {
		go func() {
			defer p.wg.Done()
			for u := range p.drops {
				_ = DropPostgres(u) // whatever is left is swept at the end
			}
		}()
	}
	return p
}

// take returns a fresh database.
func (p *dbPool) take() (string, error) {
	if p.err != nil {
		return "", p.err
	}
	select {
	case c := <-p.ready:
		return c.url, c.err
	case <-time.After(2 * time.Minute):
		return "", errors.New("timed out waiting for a test database")
	}
}

// dropAsync queues a database to be dropped; false when the queue is full
// or closed (the caller drops it itself).
func (p *dbPool) dropAsync(u string) (queued bool) {
	if p.err != nil {
		return false
	}
	defer func() {
		if recover() != nil { // closed: Main is finishing
			queued = false
		}
	}()
	select {
	case p.drops <- u:
		return true
	default:
		return false
	}
}

// close stops making databases, drops the unused ones and waits for the
// queued drops.
func (p *dbPool) close() {
	if p.err == nil {
		p.cancel()
		close(p.drops)
		p.wg.Wait()
		select {
		case c := <-p.ready:
			if c.err == nil {
				_ = DropPostgres(c.url)
			}
		default:
		}
	}
	if p.templateURL != "" {
		_ = DropPostgres(p.templateURL)
	}
}

// sweepOwn drops databases of this process a test forgot or could not drop.
func sweepOwn() {
	if !Postgres() {
		return
	}
	if db, err := adminDB(); err == nil {
		dropWhere(db, func(pid int) bool { return pid == os.Getpid() })
	}
}

// sweepDead drops test databases left by processes that no longer exist
// (a run killed at its timeout cannot clean up). Only for a server on this
// machine, where the process ids in the names mean something.
func sweepDead(base string) {
	u, err := url.Parse(base)
	if err != nil {
		return
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); !(host == "localhost" || host == "" || (ip != nil && ip.IsLoopback())) {
		return
	}
	db, err := sql.Open("postgres", base)
	if err != nil {
		return
	}
	defer db.Close()
	dropWhere(db, func(pid int) bool { return !processAlive(pid) })
}

func dropWhere(db *sql.DB, match func(pid int) bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'agentspace\_test\_%'`)
	if err != nil {
		return
	}
	var names []string
	for rows.Next() {
		var n string
		if rows.Scan(&n) == nil {
			names = append(names, n)
		}
	}
	rows.Close()
	for _, n := range names {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(n, dbPrefix), "_")
		pid, err := strconv.Atoi(pidText)
		if err != nil || !match(pid) {
			continue
		}
		_, _ = db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+n+" WITH (FORCE)")
	}
}

// processAlive reports whether a process with this id exists.
func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, os.ErrPermission)
}

// redact hides a password in a URL.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
