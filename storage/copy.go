package storage

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TableCopy is one table's row counts in a CopyReport.
type TableCopy struct {
	Table  string
	Source int64 // rows in the source snapshot
	Target int64 // rows in the target after the copy
}

// CopyReport says what CopySQLiteToPostgres copied and verified.
type CopyReport struct {
	Tables         []TableCopy
	StreamPos      StreamPos // the stream position, in source and target
	SchemaVersion  int
	SampledEvents  int // events compared column by column (by SHA-256)
	CopyDuration   time.Duration
	VerifyDuration time.Duration
}

// Rows is the total number of rows copied.
func (r *CopyReport) Rows() int64 {
	var n int64
	for _, t := range r.Tables {
		n += t.Source
	}
	return n
}

// CopyOptions tunes CopySQLiteToPostgres.
type CopyOptions struct {
	// SampleEvents is how many events verification compares in full
	// (spread over the whole history, newest included); 0 means 1000.
	SampleEvents int
	// Progress, when set, is called after each table is copied.
	Progress func(table string, rows int64)
}

// ErrTargetNotEmpty is returned when the copy target already holds data.
var ErrTargetNotEmpty = errors.New("target database is not empty")

// tables the copy handles itself rather than row by row.
var copySpecialTables = map[string]bool{
	"schema_version":  true, // both sides were migrated by this binary; versions are compared
	"stream_position": true, // set to the source's position
}

// CopySQLiteToPostgres copies every row of every table from a SQLite
// database into an empty PostgreSQL database with the same schema version
// (both opened by Open, so both are migrated), sets the target's stream
// position to the source's, and verifies the result: per-table row counts
// and a sample of events compared column by column. The source is read in
// one snapshot, so a server still writing to it would not corrupt the copy,
// but its later writes would be missing: stop the server first. The target
// is written in one transaction: a failed copy leaves it empty.
func CopySQLiteToPostgres(ctx context.Context, src, dst *DB, opts CopyOptions) (*CopyReport, error) {
	if src.dialect != SQLite || dst.dialect != Postgres {
		return nil, fmt.Errorf("copy: need a SQLite source and a PostgreSQL target (got %s → %s)", src.dialect, dst.dialect)
	}
	if opts.SampleEvents <= 0 {
		opts.SampleEvents = 1000
	}
	rep := &CopyReport{}
	start := time.Now()

	// One read transaction on one connection: every query sees one snapshot.
	conn, err := src.read.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `BEGIN`); err != nil {
		return nil, fmt.Errorf("source: starting read transaction: %w", err)
	}
	defer conn.ExecContext(context.Background(), `ROLLBACK`) //nolint:errcheck // read-only

	srcVersion, err := schemaVersion(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	dstVersion, err := schemaVersion(ctx, dst.read)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	if srcVersion != dstVersion {
		return nil, fmt.Errorf("schema versions differ: source %d, target %d", srcVersion, dstVersion)
	}
	rep.SchemaVersion = srcVersion
	if err := conn.QueryRowContext(ctx, `SELECT pos FROM stream_position WHERE id = 1`).Scan(&rep.StreamPos); err != nil {
		return nil, fmt.Errorf("source: reading stream position: %w", err)
	}

	tables, err := sqliteTables(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	dstTables, err := postgresColumns(ctx, dst.read)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	if err := checkEmpty(ctx, dst, dstTables); err != nil {
		return nil, err
	}
	for _, t := range tables {
		cols, ok := dstTables[t.name]
		if !ok {
			return nil, fmt.Errorf("table %s exists in the source but not in the target", t.name)
		}
		for _, c := range t.columns {
			if _, ok := cols[c]; !ok {
				return nil, fmt.Errorf("column %s.%s exists in the source but not in the target", t.name, c)
			}
		}
	}

	tx, err := dst.write.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after commit
	for _, t := range tables {
		var want int64
		if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM `+quoteIdent(t.name)).Scan(&want); err != nil {
			return nil, fmt.Errorf("counting %s: %w", t.name, err)
		}
		n, err := copyTable(ctx, conn, tx, t, dstTables[t.name])
		if err != nil {
			return nil, fmt.Errorf("copying %s: %w", t.name, err)
		}
		if n != want {
			return nil, fmt.Errorf("copying %s: read %d rows, table has %d", t.name, n, want)
		}
		rep.Tables = append(rep.Tables, TableCopy{Table: t.name, Source: n})
		if opts.Progress != nil {
			opts.Progress(t.name, n)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE stream_position SET pos = $1 WHERE id = 1`, rep.StreamPos); err != nil {
		return nil, fmt.Errorf("target: setting stream position: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("target: commit: %w", err)
	}
	// Fresh planner statistics, so the first queries on the copy use the indexes.
	if _, err := dst.write.ExecContext(ctx, `ANALYZE`); err != nil {
		return nil, fmt.Errorf("target: analyze: %w", err)
	}
	rep.CopyDuration = time.Since(start)

	start = time.Now()
	if err := verifyCopy(ctx, conn, dst, rep, opts.SampleEvents); err != nil {
		return rep, fmt.Errorf("verification failed: %w", err)
	}
	rep.VerifyDuration = time.Since(start)
	return rep, nil
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func schemaVersion(ctx context.Context, q queryer) (int, error) {
	var v int
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&v); err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	return v, nil
}

type copyTableInfo struct {
	name    string
	columns []string
}

// sqliteTables lists the source's data tables and their columns, leaving
// out SQLite's own tables, full-text index tables (PostgreSQL indexes
// events.body itself) and the tables the copy handles specially.
func sqliteTables(ctx context.Context, conn *sql.Conn) ([]copyTableInfo, error) {
	rows, err := conn.QueryContext(ctx, `SELECT name, COALESCE(sql, '') FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	var names, virtual []string
	for rows.Next() {
		var name, ddl string
		if err := rows.Scan(&name, &ddl); err != nil {
			rows.Close()
			return nil, err
		}
		if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(ddl)), "CREATE VIRTUAL TABLE") {
			virtual = append(virtual, name)
			continue
		}
		names = append(names, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []copyTableInfo
	for _, name := range names {
		if strings.HasPrefix(name, "sqlite_") || copySpecialTables[name] ||
			slices.ContainsFunc(virtual, func(v string) bool { return strings.HasPrefix(name, v+"_") }) {
			continue
		}
		cols, err := sqliteColumns(ctx, conn, name)
		if err != nil {
			return nil, err
		}
		out = append(out, copyTableInfo{name: name, columns: cols})
	}
	return out, nil
}

func sqliteColumns(ctx context.Context, conn *sql.Conn, table string) ([]string, error) {
	rows, err := conn.QueryContext(ctx, `SELECT name FROM pragma_table_info(?1) ORDER BY cid`, table)
	if err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, err
		}
		cols = append(cols, c)
	}
	return cols, rows.Err()
}

// postgresColumns maps each table of the target's schema to its columns' data types.
func postgresColumns(ctx context.Context, q queryer) (map[string]map[string]string, error) {
	rows, err := q.QueryContext(ctx, `SELECT c.table_name, c.column_name, c.data_type
		FROM information_schema.columns c JOIN information_schema.tables t
		  ON t.table_schema = c.table_schema AND t.table_name = c.table_name
		WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'`)
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	defer rows.Close()
	out := make(map[string]map[string]string)
	for rows.Next() {
		var table, col, typ string
		if err := rows.Scan(&table, &col, &typ); err != nil {
			return nil, err
		}
		if out[table] == nil {
			out[table] = make(map[string]string)
		}
		out[table][col] = typ
	}
	return out, rows.Err()
}

// checkEmpty refuses a target that holds any data: the copy must not mix
// two installations, and keeping ids and stream positions means it cannot.
func checkEmpty(ctx context.Context, dst *DB, tables map[string]map[string]string) error {
	var pos StreamPos
	if err := dst.read.QueryRowContext(ctx, `SELECT pos FROM stream_position WHERE id = 1`).Scan(&pos); err != nil {
		return fmt.Errorf("target: reading stream position: %w", err)
	}
	if pos != 0 {
		return fmt.Errorf("%w: its stream position is %d; copy into a freshly created database", ErrTargetNotEmpty, pos)
	}
	names := make([]string, 0, len(tables))
	for name := range tables {
		if !copySpecialTables[name] {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		var has bool
		if err := dst.read.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM `+quoteIdent(name)+`)`).Scan(&has); err != nil {
			return fmt.Errorf("target: checking %s: %w", name, err)
		}
		if has {
			return fmt.Errorf("%w: table %s has rows; copy into a freshly created database", ErrTargetNotEmpty, name)
		}
	}
	return nil
}

// copyTable streams one table into the target with COPY FROM STDIN.
func copyTable(ctx context.Context, conn *sql.Conn, tx *sql.Tx, t copyTableInfo, dstTypes map[string]string) (int64, error) {
	quoted := make([]string, len(t.columns))
	for i, c := range t.columns {
		quoted[i] = quoteIdent(c)
	}
	colList := strings.Join(quoted, ", ")
	rows, err := conn.QueryContext(ctx, `SELECT `+colList+` FROM `+quoteIdent(t.name))
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	stmt, err := tx.PrepareContext(ctx, `COPY `+quoteIdent(t.name)+` (`+colList+`) FROM STDIN`)
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	vals := make([]any, len(t.columns))
	ptrs := make([]any, len(t.columns))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var n int64
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return n, err
		}
		for i, c := range t.columns {
			v, err := toPostgres(vals[i], dstTypes[c])
			if err != nil {
				return n, fmt.Errorf("row %d, column %s: %w", n+1, c, err)
			}
			vals[i] = v
		}
		if _, err := stmt.ExecContext(ctx, vals...); err != nil {
			return n, err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, err
	}
	if _, err := stmt.ExecContext(ctx); err != nil { // flush
		return n, err
	}
	return n, nil
}

// toPostgres converts a value SQLite returned into what the target column
// takes (SQLite stores booleans as integers, and has no column types to
// enforce).
func toPostgres(v any, pgType string) (any, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case []byte:
		if pgType == "bytea" {
			return x, nil
		}
		v = string(x)
	}
	switch pgType {
	case "boolean":
		switch x := v.(type) {
		case bool:
			return x, nil
		case int64:
			return x != 0, nil
		case string:
			return strconv.ParseBool(x)
		}
	case "text", "character varying":
		switch x := v.(type) {
		case string:
			if strings.IndexByte(x, 0) >= 0 {
				return nil, errors.New("text contains a NUL byte, which PostgreSQL cannot store")
			}
			return x, nil
		case int64:
			return strconv.FormatInt(x, 10), nil
		case float64:
			return strconv.FormatFloat(x, 'g', -1, 64), nil
		}
	case "bigint", "integer", "smallint":
		switch x := v.(type) {
		case int64:
			return x, nil
		case bool:
			if x {
				return int64(1), nil
			}
			return int64(0), nil
		case string:
			return strconv.ParseInt(x, 10, 64)
		}
	default:
		return v, nil
	}
	return nil, fmt.Errorf("cannot store %T in a %s column", v, pgType)
}

// verifyCopy compares every table's row count, the stream position, and a
// sample of events column by column between the source snapshot and the target.
func verifyCopy(ctx context.Context, conn *sql.Conn, dst *DB, rep *CopyReport, sample int) error {
	for i := range rep.Tables {
		t := &rep.Tables[i]
		if err := dst.read.QueryRowContext(ctx, `SELECT count(*) FROM `+quoteIdent(t.Table)).Scan(&t.Target); err != nil {
			return fmt.Errorf("counting %s in the target: %w", t.Table, err)
		}
		if t.Target != t.Source {
			return fmt.Errorf("table %s: %d rows in the source, %d in the target", t.Table, t.Source, t.Target)
		}
	}
	var pos StreamPos
	if err := dst.read.QueryRowContext(ctx, `SELECT pos FROM stream_position WHERE id = 1`).Scan(&pos); err != nil {
		return err
	}
	if pos != rep.StreamPos {
		return fmt.Errorf("stream position: source %d, target %d", rep.StreamPos, pos)
	}

	all, err := eventPositions(ctx, conn)
	if err != nil {
		return err
	}
	picked := sampleEvents(all, sample)
	const chunk = 500
	for i := 0; i < len(picked); i += chunk {
		part := picked[i:min(i+chunk, len(picked))]
		srcRows, err := eventDigests(ctx, conn, "?", part)
		if err != nil {
			return fmt.Errorf("reading sampled events from the source: %w", err)
		}
		dstRows, err := eventDigests(ctx, dst.read, "$", part)
		if err != nil {
			return fmt.Errorf("reading sampled events from the target: %w", err)
		}
		for _, p := range part {
			s, ok := srcRows[p]
			if !ok {
				return fmt.Errorf("event at position %d vanished from the source", p)
			}
			if d, ok := dstRows[p]; !ok {
				return fmt.Errorf("event %s (position %d) is missing in the target", s.eventID, p)
			} else if d != s {
				return fmt.Errorf("event %s (position %d) differs: source %s, target %s", s.eventID, p, s.digest, d.digest)
			}
		}
	}
	rep.SampledEvents = len(picked)
	return nil
}

func eventPositions(ctx context.Context, conn *sql.Conn) ([]StreamPos, error) {
	rows, err := conn.QueryContext(ctx, `SELECT pos FROM events ORDER BY pos`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StreamPos
	for rows.Next() {
		var p StreamPos
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// sampleEvents picks n positions: evenly spread over the history, the
// newest ten, and the rest at random.
func sampleEvents(all []StreamPos, n int) []StreamPos {
	if len(all) <= n {
		return all
	}
	set := make(map[StreamPos]bool, n)
	for _, p := range all[len(all)-10:] {
		set[p] = true
	}
	step := float64(len(all)) / float64(n/2)
	for f := 0.0; int(f) < len(all) && len(set) < n/2+10; f += step {
		set[all[int(f)]] = true
	}
	for len(set) < n {
		set[all[rand.IntN(len(all))]] = true
	}
	out := make([]StreamPos, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

type eventDigest struct {
	eventID string
	digest  string
}

// eventDigests hashes every column of the events at the given positions;
// mark is the engine's placeholder prefix ("?" for SQLite, "$" for PostgreSQL).
func eventDigests(ctx context.Context, q queryer, mark string, positions []StreamPos) (map[StreamPos]eventDigest, error) {
	args := make([]any, len(positions))
	ph := make([]string, len(positions))
	for i, p := range positions {
		args[i] = int64(p)
		ph[i] = mark + strconv.Itoa(i+1)
	}
	rows, err := q.QueryContext(ctx, `SELECT `+eventColumns+` FROM events WHERE pos IN (`+strings.Join(ph, ", ")+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	out := make(map[StreamPos]eventDigest, len(positions))
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		h := sha256.New()
		for _, v := range vals {
			switch x := v.(type) {
			case nil:
				h.Write([]byte{0})
			case []byte:
				fmt.Fprintf(h, "s%d:%s", len(x), x)
			case string:
				fmt.Fprintf(h, "s%d:%s", len(x), x)
			default:
				fmt.Fprintf(h, "v%v;", x)
			}
		}
		pos, _ := vals[0].(int64)
		id, _ := vals[1].(string)
		out[StreamPos(pos)] = eventDigest{eventID: id, digest: hex.EncodeToString(h.Sum(nil))}
	}
	return out, rows.Err()
}

// quoteIdent quotes an SQL identifier (names come from the catalogs).
func quoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
