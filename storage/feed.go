package storage

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/lib/pq"
)

// Commit describes one committed write transaction to a commit observer.
type Commit struct {
	// First and Last are the stream positions the transaction allocated
	// (both 0 when it allocated none). They are contiguous: positions are
	// allocated under the stream_position row lock.
	First, Last StreamPos
	// AuthChanged: the transaction may have revoked or changed a token,
	// device or user.
	AuthChanged bool
}

// SetCommitObserver makes fn run after every successful commit, after the
// transaction's OnCommit hooks, still under the write lock and in commit
// order. Like the hooks it must not block or do I/O. nil removes it.
func (db *DB) SetCommitObserver(fn func(Commit)) {
	if fn == nil {
		db.observer.Store(nil)
		return
	}
	db.observer.Store(&fn)
}

// BumpAuthGeneration invalidates every cached session, as a local commit
// touching tokens, devices or users does. Another instance's logout or
// token revocation reaches this one through it.
func (db *DB) BumpAuthGeneration() { db.authGen.Add(1) }

// FeedChannel is the PostgreSQL LISTEN/NOTIFY channel that instances sharing
// one database announce their commits on.
const FeedChannel = "agentspace_feed"

// MaxFeedPayload is the largest notification payload sent (PostgreSQL's
// limit is 8000 bytes).
const MaxFeedPayload = 7900

// ErrFeedPayloadTooLarge is returned by Publish for a message that cannot
// fit one notification.
var ErrFeedPayloadTooLarge = errors.New("feed message too large")

// Feed is the change feed between instances sharing one PostgreSQL
// database: Publish queues a message (one line, no newline inside) that a
// background sender delivers with pg_notify on a dedicated connection,
// several messages per notification when they fit; Messages yields what the
// other instances (and this one) published. Delivery is best effort: a
// notification can be lost when a publisher dies or the listener
// reconnects, so users of the feed must poll as well (Reconnected tells
// them when the listener lost its session).
type Feed struct {
	db  *DB
	log *slog.Logger
	l   *pq.Listener

	mu    sync.Mutex
	queue [][]byte
	kick  chan struct{}

	msgs        chan []byte
	reconnected chan struct{}
	closeOnce   sync.Once
	done        chan struct{}
	wg          sync.WaitGroup
}

// OpenFeed starts listening on FeedChannel at url (the database's
// PostgreSQL URL) and starts the sender. Close stops both.
func OpenFeed(ctx context.Context, db *DB, url string, log *slog.Logger) (*Feed, error) {
	if db.dialect != Postgres {
		return nil, errors.New("the change feed needs PostgreSQL")
	}
	f := &Feed{
		db: db, log: log,
		kick:        make(chan struct{}, 1),
		msgs:        make(chan []byte, 1024),
		reconnected: make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	f.l = pq.NewListener(url, 50*time.Millisecond, 2*time.Second, func(ev pq.ListenerEventType, err error) {
		if err != nil && ev != pq.ListenerEventConnected {
			log.Warn("change feed listener", "event", int(ev), "err", err)
		}
	})
	if err := f.l.Listen(FeedChannel); err != nil {
		f.l.Close()
		return nil, fmt.Errorf("listening on %s: %w", FeedChannel, err)
	}
	f.wg.Add(2)
	go f.receive()
	go f.send()
	return f, nil
}

// Messages yields the messages published by every instance, including
// this one, in the order PostgreSQL delivers the notifications.
func (f *Feed) Messages() <-chan []byte { return f.msgs }

// Reconnected receives a value whenever the listener had to reconnect:
// notifications sent meanwhile are lost.
func (f *Feed) Reconnected() <-chan struct{} { return f.reconnected }

// Publish queues msg (which must not contain a newline) for sending. It
// never blocks, so it may be called from a commit observer.
func (f *Feed) Publish(msg []byte) error {
	if len(msg) > MaxFeedPayload {
		return ErrFeedPayloadTooLarge
	}
	f.mu.Lock()
	f.queue = append(f.queue, msg)
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
	return nil
}

// Close stops the listener and the sender (queued messages are sent first
// when the database still answers).
func (f *Feed) Close() {
	f.closeOnce.Do(func() {
		close(f.done)
		f.wg.Wait()
		f.l.Close()
	})
}

func (f *Feed) receive() {
	defer f.wg.Done()
	ping := time.NewTicker(30 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-f.done:
			return
		case n := <-f.l.Notify:
			if n == nil { // reconnected: whatever was sent meanwhile is lost
				select {
				case f.reconnected <- struct{}{}:
				default:
				}
				continue
			}
			for _, line := range bytes.Split([]byte(n.Extra), []byte{'\n'}) {
				if len(line) == 0 {
					continue
				}
				select {
				case f.msgs <- line:
				case <-f.done:
					return
				}
			}
		case <-ping.C:
			go func() { _ = f.l.Ping() }()
		}
	}
}

// send delivers queued messages in order, packing as many as fit into one
// notification.
func (f *Feed) send() {
	defer f.wg.Done()
	var conn *sql.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		f.mu.Lock()
		batch := f.queue
		f.queue = nil
		f.mu.Unlock()
		for len(batch) > 0 {
			var buf bytes.Buffer
			n := 0
			for n < len(batch) && (buf.Len() == 0 || buf.Len()+1+len(batch[n]) <= MaxFeedPayload) {
				if buf.Len() > 0 {
					buf.WriteByte('\n')
				}
				buf.Write(batch[n])
				n++
			}
			var err error
			for attempt := 0; attempt < 3; attempt++ {
				if conn == nil {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					conn, err = f.db.write.Conn(ctx)
					cancel()
					if err != nil {
						conn = nil
						continue
					}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err = conn.ExecContext(ctx, `SELECT pg_notify($1, $2)`, FeedChannel, buf.String())
				cancel()
				if err == nil {
					break
				}
				conn.Close()
				conn = nil
			}
			if err != nil {
				// The other instances' fallback poll catches up instead.
				f.log.Warn("change feed: publishing failed", "err", err)
			}
			batch = batch[n:]
		}
		select {
		case <-f.kick:
		case <-f.done:
			f.mu.Lock()
			empty := len(f.queue) == 0
			f.mu.Unlock()
			if empty {
				return
			}
		}
	}
}
