package storage

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// On SQLite, message bodies enter the FTS4 search index in batches rather
// than in the transaction that stores the event: an FTS4 insert per event
// adds an index segment per commit and cost about 15% of a send. The events
// table stays the truth; the index follows it within IndexSearchEvery, and
// every search first brings it up to date, so a search never misses a
// stored message. (PostgreSQL indexes bodies with a GIN expression index,
// which needs none of this.)

// IndexSearchEvery is how often RunSearchIndexer indexes new messages.
const IndexSearchEvery = 200 * time.Millisecond

// searchIndex tracks what the FTS4 index holds. upTo and ready are only
// read and moved inside Write; dirty is atomic so an idle server's indexer
// need not open a transaction to find nothing to do.
type searchIndex struct {
	// upTo: every event with pos <= upTo that has a body is indexed.
	upTo StreamPos
	// ready: upTo has been read from the index (after a restart).
	ready atomic.Bool
	// dirty: a body was stored past upTo (set by InsertEvent).
	dirty atomic.Bool
}

// FlushSearchIndex indexes the bodies stored since the last flush (SQLite;
// a no-op on PostgreSQL or when nothing is new).
func (db *DB) FlushSearchIndex(ctx context.Context) error {
	si := &db.search
	if db.dialect != SQLite || (si.ready.Load() && !si.dirty.Load()) {
		return nil
	}
	return db.Write(ctx, func(tx *Tx) error {
		if !si.ready.Load() {
			// After a restart: everything up to the newest indexed event is
			// in; later events are re-examined (those without a body cost a
			// scan, nothing more).
			var top int64
			if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(docid), 0) FROM events_fts_content`).Scan(&top); err != nil {
				return fmt.Errorf("reading the search index position: %w", err)
			}
			si.upTo = StreamPos(top)
			si.ready.Store(true)
			si.dirty.Store(true)
		}
		if !si.dirty.Load() {
			return nil
		}
		var top int64
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(pos), 0) FROM events`).Scan(&top); err != nil {
			return fmt.Errorf("reading the newest event: %w", err)
		}
		if StreamPos(top) > si.upTo {
			if _, err := tx.Exec(ctx, `INSERT INTO events_fts (rowid, body)
				SELECT pos, body FROM events WHERE pos > $1 AND pos <= $2 AND body IS NOT NULL ORDER BY pos`, si.upTo, top); err != nil {
				return fmt.Errorf("indexing messages for search: %w", err)
			}
		}
		upTo := StreamPos(top)
		tx.OnCommit(func() {
			si.upTo = upTo
			si.dirty.Store(false)
		})
		return nil
	})
}

// RunSearchIndexer flushes the search index every IndexSearchEvery until
// ctx ends (SQLite; returns at once on PostgreSQL). A failed flush is
// reported to onError and retried at the next tick: nothing is lost, the
// events table holds every body.
func (db *DB) RunSearchIndexer(ctx context.Context, onError func(error)) {
	if db.dialect != SQLite {
		return
	}
	t := time.NewTicker(IndexSearchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := db.FlushSearchIndex(ctx); err != nil && ctx.Err() == nil {
				onError(err)
			}
		}
	}
}
