package storage

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"
)

// Advisory lock namespaces (the first key of PostgreSQL's two-key advisory
// locks), so room locks and leases never collide.
const (
	lockSpaceRoom  int32 = 0x41530001 // "AS" 1: one room's event graph (transaction scope)
	lockSpaceLease int32 = 0x41530002 // "AS" 2: a lease (session scope)
)

// lockKey hashes a name into the second key of an advisory lock. Two names
// with one hash share a lock: that only serialises more than needed.
func lockKey(name string) int32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return int32(h.Sum32())
}

// LockRoom serialises writers of one room's event graph across every
// process sharing the database: on PostgreSQL it takes a transaction-scoped
// advisory lock keyed by the room id, held until commit or rollback. Take it
// before NextPos (always in this order: room, then stream position) so two
// instances never deadlock. A no-op on SQLite, where Write is the only
// writer anyway.
func (tx *Tx) LockRoom(ctx context.Context, roomID string) error {
	if tx.db.dialect != Postgres {
		return nil
	}
	if _, err := tx.tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, lockSpaceRoom, lockKey(roomID)); err != nil {
		return fmt.Errorf("locking room %s: %w", roomID, err)
	}
	return nil
}

// LatestRoomEventID reads, inside the transaction, the id of a room's newest
// event ("" for a room without events). Under LockRoom it is the event the
// next one must follow.
func (tx *Tx) LatestRoomEventID(ctx context.Context, roomID string) (string, error) {
	var id string
	err := tx.QueryRow(ctx, `SELECT event_id FROM events WHERE room_id = $1 ORDER BY pos DESC LIMIT 1`, roomID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return id, err
}

// Lease is held by at most one process sharing the database at a time: a
// PostgreSQL session advisory lock on a connection of its own. PostgreSQL
// releases it when that session ends, so a process that dies (even by
// kill -9) loses it within the server's connection timeout, and another
// process's AcquireLease gets it. On SQLite every lease is granted at once.
type Lease struct {
	conn     *sql.Conn
	key      int32
	lost     chan struct{}
	lostOnce sync.Once
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// LeaseRetry is how often AcquireLease tries again while another process
// holds the lease, and how often a held lease checks its connection.
const LeaseRetry = time.Second

// AcquireLease blocks until this process holds the lease called name, or
// ctx ends.
func (db *DB) AcquireLease(ctx context.Context, name string) (*Lease, error) {
	l := &Lease{key: lockKey(name), lost: make(chan struct{}), stop: make(chan struct{})}
	if db.dialect != Postgres {
		return l, nil
	}
	for {
		// An error (database unreachable) is retried like a busy lease.
		if ok, _ := l.try(ctx, db); ok {
			l.wg.Add(1)
			go l.watch()
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(LeaseRetry):
		}
	}
}

func (l *Lease) try(ctx context.Context, db *DB) (bool, error) {
	conn, err := db.write.Conn(ctx)
	if err != nil {
		return false, err
	}
	var ok bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1, $2)`, lockSpaceLease, l.key).Scan(&ok); err != nil {
		conn.Raw(func(any) error { return driver.ErrBadConn }) // do not reuse a session in doubt
		conn.Close()
		return false, err
	}
	if !ok {
		conn.Close()
		return false, nil
	}
	l.conn = conn
	return true, nil
}

// watch checks the lease's session every LeaseRetry; if it is gone, the
// lock is gone with it.
func (l *Lease) watch() {
	defer l.wg.Done()
	t := time.NewTicker(LeaseRetry)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), LeaseRetry)
			err := l.conn.PingContext(ctx)
			cancel()
			if err != nil {
				l.lostOnce.Do(func() { close(l.lost) })
				return
			}
		}
	}
}

// Lost is closed when the lease was lost (its database session ended);
// the holder must stop acting on it at once.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Release gives the lease up. Idempotent.
func (l *Lease) Release() {
	l.stopOnce.Do(func() {
		close(l.stop)
		l.wg.Wait()
		if l.conn == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := l.conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1, $2)`, lockSpaceLease, l.key); err != nil {
			// Closing a session in doubt ends it, and the lock with it.
			l.conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		l.conn.Close()
	})
}
