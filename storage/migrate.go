package storage

import (
	"context"
	"embed"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered schema change.
type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	entries, err := migrationFiles.ReadDir("migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(strings.TrimPrefix(name, "v"), "_")
		if !ok {
			return nil, fmt.Errorf("migration %s: name must be vNNN_description.sql", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", name, err)
		}
		body, err := migrationFiles.ReadFile("migrations/" + name)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// forDialect keeps "-- only: <dialect>" lines for this engine and drops them for the other.
func (db *DB) forDialect(sqlText string) string {
	var b strings.Builder
	for _, line := range strings.Split(sqlText, "\n") {
		trimmed := strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(trimmed, "-- only: "); ok {
			engine, stmt, _ := strings.Cut(rest, " ")
			if engine != db.dialect.String() {
				continue
			}
			line = stmt
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// splitStatements splits on ";" at line ends; migrations keep one statement
// per ";"-terminated line group and never put ";" at a line end inside a string.
func splitStatements(sqlText string) []string {
	var stmts []string
	var cur strings.Builder
	for _, line := range strings.Split(sqlText, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			stmts = append(stmts, cur.String())
			cur.Reset()
		}
	}
	if strings.TrimSpace(cur.String()) != "" {
		stmts = append(stmts, cur.String())
	}
	return stmts
}

// migrate applies every migration newer than the recorded version, each in
// its own transaction together with the version bump.
func (db *DB) migrate(ctx context.Context) error { return db.migrateTo(ctx, math.MaxInt) }

// migrateTo is migrate stopping after version upTo (tests of one migration).
func (db *DB) migrateTo(ctx context.Context, upTo int) error {
	migs, err := loadMigrations()
	if err != nil {
		return err
	}
	if _, err := db.write.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("creating schema_version: %w", err)
	}
	if db.dialect == Postgres {
		// Several instances may start at once; one migrates, the others wait.
		if _, err := db.write.ExecContext(ctx, `SELECT pg_advisory_lock(7364201)`); err != nil {
			return fmt.Errorf("taking migration lock: %w", err)
		}
		defer db.write.ExecContext(context.Background(), `SELECT pg_advisory_unlock(7364201)`) //nolint:errcheck
	}
	var current int
	if err := db.write.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&current); err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}
	for _, m := range migs {
		if m.version <= current || m.version > upTo {
			continue
		}
		tx, err := db.write.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		for _, stmt := range splitStatements(db.forDialect(m.sql)) {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				_ = tx.Rollback()
				return fmt.Errorf("%s: %w\n%s", m.name, err, stmt)
			}
		}
		if _, err := tx.ExecContext(ctx, db.rebind(`INSERT INTO schema_version (version, name, applied_ts) VALUES ($1, $2, $3)`),
			m.version, m.name, nowMillis()); err != nil {
			_ = tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("%s: commit: %w", m.name, err)
		}
	}
	return nil
}
