// Package storage holds AgentSpace's one schema and the queries on it, for both
// SQLite (the embedded default) and PostgreSQL. SQL is written once with $N
// placeholders; the few engine differences live in Dialect.
package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/lib/pq"           // PostgreSQL driver
	_ "github.com/mattn/go-sqlite3" // SQLite driver (cgo: native speed, statements stay prepared)
)

// Dialect names a database engine.
type Dialect int

// The supported engines.
const (
	SQLite Dialect = iota
	Postgres
)

func (d Dialect) String() string {
	if d == Postgres {
		return "postgres"
	}
	return "sqlite"
}

// Sentinel errors returned instead of driver errors.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
)

// StreamPos is a position in the server's single ordered stream. Every
// persisted change a client can sync (events, receipts, account data, typing,
// presence, to-device messages, device-list changes) takes the next position.
type StreamPos int64

// DB is the database handle. Reads go through a pool; all writes go through
// Write, which serialises them (SQLite has one writer; positions must commit
// in order so a reader that saw position N has also seen every position < N).
type DB struct {
	dialect Dialect
	read    *sql.DB
	write   *sql.DB

	writeMu sync.Mutex
	// sqlitePos is the stream_position row's committed value on SQLite,
	// known when sqlitePosKnown (both guarded by writeMu): one process owns
	// a SQLite file's writes, so positions are counted here instead of
	// being read back from the row in every transaction.
	sqlitePos      StreamPos
	sqlitePosKnown bool
	// writeStmts (guarded by writeMu) caches what the write side knows
	// about each query text: its rebound form, whether it touches auth,
	// and on SQLite its prepared statement. Statements are prepared
	// between transactions (see prepareWrites): preparing on the
	// one-connection write pool while a transaction holds it would deadlock.
	writeStmts map[string]*writeStmt
	toPrepare  []*writeStmt

	// authGen counts committed changes to tokens, devices or users, so
	// caches of authenticated sessions know when to drop everything.
	authGen atomic.Uint64
	// observer, when set, is told of every commit (see SetCommitObserver).
	observer atomic.Pointer[func(Commit)]
	// search is what the SQLite full-text index holds (searchindex.go).
	search searchIndex

	// Prepared read statements keyed by SQL text. SQLite spends as long
	// parsing a small query as running it, so reuse matters.
	readStmts stmtCache
}

// maxCachedStatements bounds the caches: queries built with a variable
// number of placeholders are many, so past this they are prepared per use.
const maxCachedStatements = 512

type stmtCache struct {
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

// get returns a cached prepared statement for query on pool, or nil when
// the cache is full (the caller then runs the query unprepared).
func (c *stmtCache) get(ctx context.Context, pool *sql.DB, query string) (*sql.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.stmts[query]; ok {
		return st, nil
	}
	if len(c.stmts) >= maxCachedStatements {
		return nil, nil
	}
	st, err := pool.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if c.stmts == nil {
		c.stmts = make(map[string]*sql.Stmt)
	}
	c.stmts[query] = st
	return st, nil
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.stmts {
		st.Close()
	}
	c.stmts = nil
}

// writeStmt is one query text as the write side runs it.
type writeStmt struct {
	query string    // rebound for the dialect
	auth  bool      // touchesAuth(query)
	stmt  *sql.Stmt // prepared on the write pool (SQLite only); nil until then
}

// Options says which database to open.
type Options struct {
	// SQLitePath is the SQLite file; used when PostgresURL is empty.
	SQLitePath string
	// PostgresURL selects PostgreSQL.
	PostgresURL string
}

// Open opens (creating if needed) the database and runs pending migrations.
func Open(ctx context.Context, opts Options) (*DB, error) {
	db, err := openUnmigrated(opts)
	if err != nil {
		return nil, err
	}
	if err := db.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrating database: %w", err)
	}
	return db, nil
}

// openUnmigrated opens the database and runs no migration.
func openUnmigrated(opts Options) (*DB, error) {
	if opts.PostgresURL != "" {
		return openPostgres(opts.PostgresURL)
	}
	return openSQLite(opts.SQLitePath)
}

func openSQLite(path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating database directory: %w", err)
		}
	}
	// Create the file ourselves so it gets mode 0600 (the driver would use 0644).
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating database file: %w", err)
	}
	f.Close()
	// synchronous=NORMAL in WAL mode survives a process crash (SIGKILL) without
	// losing a committed transaction; only an OS crash can lose the last ones.
	dsn := "file:" + path + "?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=10000&_foreign_keys=1&_txlock=immediate"
	write, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening sqlite: %w", err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	read, err := sql.Open("sqlite3", dsn+"&_query_only=1")
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("opening sqlite: %w", err)
	}
	read.SetMaxOpenConns(8)
	read.SetMaxIdleConns(8)
	read.SetConnMaxLifetime(0)
	// Checkpoints run in the background (RunCheckpoints), not inside
	// whichever commit happens to cross the WAL size threshold.
	if _, err := write.Exec(`PRAGMA wal_autocheckpoint = 0`); err != nil {
		write.Close()
		read.Close()
		return nil, fmt.Errorf("configuring sqlite %s: %w", path, err)
	}
	if err := write.Ping(); err != nil {
		write.Close()
		read.Close()
		return nil, fmt.Errorf("opening sqlite %s: %w", path, err)
	}
	return &DB{dialect: SQLite, read: read, write: write}, nil
}

func openPostgres(url string) (*DB, error) {
	pool, err := sql.Open("postgres", url)
	if err != nil {
		return nil, fmt.Errorf("opening postgres: %w", err)
	}
	pool.SetMaxOpenConns(20)
	pool.SetMaxIdleConns(10)
	if err := pool.Ping(); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to postgres: %w", err)
	}
	return &DB{dialect: Postgres, read: pool, write: pool}, nil
}

// RunCheckpoints copies the SQLite write-ahead log back into the database
// file every interval until ctx ends, so commits never pay for it. A no-op
// on PostgreSQL.
func (db *DB) RunCheckpoints(ctx context.Context, every time.Duration) {
	if db.dialect != SQLite {
		return
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			// RESTART, not PASSIVE: with /sync readers always active a
			// passive checkpoint never lets the log start over, so it grows
			// without bound and every page lookup slows down. RESTART waits
			// (briefly: reads are short) until readers have moved on; it runs
			// on the write connection, so writes just queue behind it.
			if _, err := db.write.ExecContext(ctx, `PRAGMA wal_checkpoint(RESTART)`); err != nil && ctx.Err() == nil {
				continue // retried next tick; the WAL just grows meanwhile
			}
		}
	}
}

// Dialect reports the engine in use.
func (db *DB) Dialect() Dialect { return db.dialect }

// Close closes the database.
func (db *DB) Close() error {
	db.readStmts.close()
	db.writeMu.Lock()
	for _, ws := range db.writeStmts {
		if ws.stmt != nil {
			ws.stmt.Close()
		}
	}
	db.writeStmts, db.toPrepare = nil, nil
	db.writeMu.Unlock()
	err := db.write.Close()
	if db.read != db.write {
		if err2 := db.read.Close(); err == nil {
			err = err2
		}
	}
	return err
}

// rebind turns $N placeholders into SQLite's ?N (which, unlike $N, SQLite
// binds by number rather than by order of first appearance).
func (db *DB) rebind(query string) string {
	if db.dialect != SQLite || !strings.Contains(query, "$") {
		return query
	}
	b := []byte(query)
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '$' && b[i+1] >= '0' && b[i+1] <= '9' {
			b[i] = '?'
		}
	}
	return string(b)
}

// Querier is what both the read pool and a write transaction offer.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Tx is a write transaction. Its methods take $N SQL.
type Tx struct {
	db *DB
	tx *sql.Tx
	// lastPos is the last position NextPos handed out; storedPos is the
	// value the stream_position row holds in this transaction.
	lastPos, storedPos StreamPos
	// firstPos is the first position NextPos handed out (0: none).
	firstPos    StreamPos
	onCommit    []func()
	authChanged bool
	// stmts are this transaction's handles on prepared write statements.
	stmts map[*writeStmt]*sql.Stmt
}

// AuthGeneration changes after every committed transaction that revoked or
// changed a token, device or user: a session cache entry from an older
// generation must be looked up again.
func (db *DB) AuthGeneration() uint64 { return db.authGen.Load() }

// touchesAuth reports whether a write may revoke or change who a token
// belongs to (new tokens cannot invalidate a cached session).
func touchesAuth(query string) bool {
	q := strings.TrimSpace(query)
	if strings.HasPrefix(q, "INSERT") {
		return false
	}
	return strings.Contains(q, "access_tokens") || strings.Contains(q, "refresh_tokens") ||
		strings.Contains(q, "UPDATE users") || strings.Contains(q, "FROM devices") || strings.Contains(q, "FROM users")
}

// statement returns what the write side knows about query and, when it
// has been prepared, this transaction's handle on the prepared statement.
// A query seen for the first time runs unprepared and is prepared before
// the next transaction begins.
func (tx *Tx) statement(ctx context.Context, query string) (*writeStmt, *sql.Stmt) {
	db := tx.db
	ws := db.writeStmts[query]
	if ws == nil {
		ws = &writeStmt{query: db.rebind(query), auth: touchesAuth(query)}
		if len(db.writeStmts) < maxCachedStatements {
			if db.writeStmts == nil {
				db.writeStmts = make(map[string]*writeStmt)
			}
			db.writeStmts[query] = ws
			if db.dialect == SQLite {
				db.toPrepare = append(db.toPrepare, ws)
			}
		}
		return ws, nil
	}
	if ws.stmt == nil {
		return ws, nil
	}
	st := tx.stmts[ws]
	if st == nil {
		st = tx.tx.StmtContext(ctx, ws.stmt)
		if tx.stmts == nil {
			tx.stmts = make(map[*writeStmt]*sql.Stmt, 8)
		}
		tx.stmts[ws] = st
	}
	return ws, st
}

// prepareWrites prepares the write statements first seen since the last
// transaction. It runs under writeMu with no transaction open, so the write
// pool's one connection is free. A statement that fails to prepare simply
// keeps running unprepared.
func (db *DB) prepareWrites(ctx context.Context) {
	for _, ws := range db.toPrepare {
		if st, err := db.write.PrepareContext(ctx, ws.query); err == nil {
			ws.stmt = st
		}
	}
	db.toPrepare = db.toPrepare[:0]
}

// Exec runs a statement in the transaction.
func (tx *Tx) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	ws, st := tx.statement(ctx, query)
	if ws.auth {
		tx.authChanged = true
	}
	var res sql.Result
	var err error
	if st != nil {
		res, err = st.ExecContext(ctx, args...)
	} else {
		res, err = tx.tx.ExecContext(ctx, ws.query, args...)
	}
	return res, mapError(err)
}

// Query runs a query in the transaction.
func (tx *Tx) Query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ws, st := tx.statement(ctx, query)
	if st != nil {
		return st.QueryContext(ctx, args...)
	}
	return tx.tx.QueryContext(ctx, ws.query, args...)
}

// QueryRow runs a single-row query in the transaction.
func (tx *Tx) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	ws, st := tx.statement(ctx, query)
	if st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return tx.tx.QueryRowContext(ctx, ws.query, args...)
}

// NextPos allocates the next stream position. The first call of a
// transaction moves the stream_position row (whose lock, held until commit,
// keeps positions committing in the order allocated on PostgreSQL too);
// later calls count on in memory, and the row is brought up to date once,
// just before the commit.
//
// On SQLite the row is written only by storePos: the committed value is
// known in memory (see DB.sqlitePos).
func (tx *Tx) NextPos(ctx context.Context) (StreamPos, error) {
	if tx.lastPos > 0 {
		tx.lastPos++
		return tx.lastPos, nil
	}
	db := tx.db
	if db.dialect == SQLite {
		if !db.sqlitePosKnown {
			if err := tx.QueryRow(ctx, `SELECT pos FROM stream_position WHERE id = 1`).Scan(&db.sqlitePos); err != nil {
				return 0, fmt.Errorf("reading stream position: %w", err)
			}
			db.sqlitePosKnown = true
		}
		tx.storedPos = db.sqlitePos
		tx.lastPos = tx.storedPos + 1
		tx.firstPos = tx.lastPos
		return tx.lastPos, nil
	}
	var pos StreamPos
	err := tx.QueryRow(ctx, `UPDATE stream_position SET pos = pos + 1 WHERE id = 1 RETURNING pos`).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("allocating stream position: %w", err)
	}
	tx.lastPos, tx.storedPos, tx.firstPos = pos, pos, pos
	return pos, nil
}

// storePos writes the last allocated position to the stream_position row
// if NextPos counted past what the row holds.
func (tx *Tx) storePos(ctx context.Context) error {
	if tx.lastPos <= tx.storedPos {
		return nil
	}
	// The expected old value guards the in-memory count on SQLite: a row
	// moved by anyone else fails the transaction rather than reusing
	// positions (the count is then read again).
	res, err := tx.Exec(ctx, `UPDATE stream_position SET pos = $1 WHERE id = 1 AND pos = $2`, tx.lastPos, tx.storedPos)
	if err != nil {
		return fmt.Errorf("storing stream position: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("storing stream position: %w", err)
	} else if n != 1 {
		return fmt.Errorf("storing stream position: the row no longer holds %d (another process writing the database?)", tx.storedPos)
	}
	tx.storedPos = tx.lastPos
	return nil
}

// OnCommit registers fn to run after a successful commit, still under the
// write lock, in commit order. It must not block or do I/O: it exists so that
// in-memory caches and the sync notifier advance in exactly stream order.
func (tx *Tx) OnCommit(fn func()) { tx.onCommit = append(tx.onCommit, fn) }

// Write runs fn in a write transaction and commits it. Writes are serialised.
func (db *DB) Write(ctx context.Context, fn func(tx *Tx) error) error {
	db.writeMu.Lock()
	defer db.writeMu.Unlock()
	if len(db.toPrepare) > 0 {
		db.prepareWrites(ctx)
	}
	sqlTx, err := db.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", mapError(err))
	}
	tx := &Tx{db: db, tx: sqlTx}
	err = fn(tx)
	if err == nil {
		err = tx.storePos(ctx)
	}
	if err != nil {
		_ = sqlTx.Rollback()
		db.sqlitePosKnown = false
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		if tx.authChanged {
			db.authGen.Add(1) // the outcome is unknown: be safe
		}
		db.sqlitePosKnown = false
		return fmt.Errorf("committing transaction: %w", mapError(err))
	}
	if tx.lastPos > 0 && db.dialect == SQLite {
		db.sqlitePos = tx.lastPos
	}
	if tx.authChanged {
		db.authGen.Add(1)
	}
	for _, f := range tx.onCommit {
		f()
	}
	if obs := db.observer.Load(); obs != nil {
		(*obs)(Commit{First: tx.firstPos, Last: tx.lastPos, AuthChanged: tx.authChanged})
	}
	return nil
}

// readContext is the context a read runs with. On SQLite a query that has
// started runs to its end: the driver would otherwise start a goroutine per
// row (and per statement) just to watch for cancellation, which costs more
// than the short reads here take. A request already cancelled still fails.
func (db *DB) readContext(ctx context.Context) context.Context {
	if db.dialect == SQLite && ctx.Err() == nil {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// Query runs a read query on the read pool.
func (db *DB) Query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ctx = db.readContext(ctx)
	query = db.rebind(query)
	if st, err := db.readStmts.get(ctx, db.read, query); err == nil && st != nil {
		return st.QueryContext(ctx, args...)
	}
	return db.read.QueryContext(ctx, query, args...)
}

// QueryRow runs a single-row read query on the read pool.
func (db *DB) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	ctx = db.readContext(ctx)
	query = db.rebind(query)
	if st, err := db.readStmts.get(ctx, db.read, query); err == nil && st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return db.read.QueryRowContext(ctx, query, args...)
}

// CurrentPos is the highest committed stream position.
func (db *DB) CurrentPos(ctx context.Context) (StreamPos, error) {
	var pos StreamPos
	err := db.QueryRow(ctx, `SELECT pos FROM stream_position WHERE id = 1`).Scan(&pos)
	return pos, err
}

// IntegrityCheck runs the engine's consistency check (SQLite's
// integrity_check; on PostgreSQL a catalog sanity query).
func (db *DB) IntegrityCheck(ctx context.Context) error {
	if db.dialect == Postgres {
		var n int
		return db.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&n)
	}
	var res string
	if err := db.QueryRow(ctx, `PRAGMA integrity_check`).Scan(&res); err != nil {
		return err
	}
	if res != "ok" {
		return fmt.Errorf("integrity_check: %s", res)
	}
	return nil
}

// mapError turns driver constraint errors into sentinels.
func mapError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if strings.Contains(msg, "UNIQUE constraint failed") || strings.Contains(msg, "duplicate key value") ||
		strings.Contains(msg, "constraint failed: PRIMARY KEY") {
		return fmt.Errorf("%w: %v", ErrAlreadyExists, err)
	}
	return err
}

// notFound maps sql.ErrNoRows to ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

// placeholders returns "$start, $start+1, ..." for n values.
func placeholders(start, n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d", start+i)
	}
	return b.String()
}
