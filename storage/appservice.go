package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// AppserviceState is one appservice's position in the event stream.
type AppserviceState struct {
	AppserviceID string
	// DeliveredPos is the last stream position whose events the appservice
	// has acknowledged (or that held nothing for it).
	DeliveredPos StreamPos
	LastTxnID    int64
	// PendingTxnID/PendingEndPos describe the transaction in flight: it
	// carries the interesting events in (DeliveredPos, PendingEndPos].
	PendingTxnID  *int64
	PendingEndPos *StreamPos
	LastSuccessTS int64
	LastError     string
	LastErrorTS   int64
	// Failures counts consecutive failed attempts (0 after a success).
	Failures int64
}

const appserviceStateColumns = `appservice_id, delivered_pos, last_txn_id, pending_txn_id, pending_end_pos,
	last_success_ts, last_error, last_error_ts, failures`

// AppserviceState loads an appservice's state, creating it at startPos
// (normally the current stream position: a new appservice is not sent the
// whole history) when it has none.
func (db *DB) AppserviceState(ctx context.Context, id string, startPos StreamPos) (*AppserviceState, error) {
	st, err := db.appserviceState(ctx, id)
	if !errors.Is(err, ErrNotFound) {
		return st, err
	}
	err = db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO appservice_state (appservice_id, delivered_pos) VALUES ($1, $2) ON CONFLICT (appservice_id) DO NOTHING`, id, startPos)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("creating appservice state for %s: %w", id, err)
	}
	return db.appserviceState(ctx, id)
}

func (db *DB) appserviceState(ctx context.Context, id string) (*AppserviceState, error) {
	var st AppserviceState
	err := db.QueryRow(ctx, `SELECT `+appserviceStateColumns+` FROM appservice_state WHERE appservice_id = $1`, id).Scan(
		&st.AppserviceID, &st.DeliveredPos, &st.LastTxnID, &st.PendingTxnID, &st.PendingEndPos,
		&st.LastSuccessTS, &st.LastError, &st.LastErrorTS, &st.Failures)
	if err != nil {
		return nil, notFound(err)
	}
	return &st, nil
}

// BeginAppserviceTxn records a transaction before it is sent: it takes the
// next transaction id and remembers which stream range it covers.
func (db *DB) BeginAppserviceTxn(ctx context.Context, id string, endPos StreamPos) (int64, error) {
	var txnID int64
	err := db.Write(ctx, func(tx *Tx) error {
		return tx.QueryRow(ctx, `UPDATE appservice_state SET last_txn_id = last_txn_id + 1, pending_txn_id = last_txn_id + 1, pending_end_pos = $2
			WHERE appservice_id = $1 RETURNING pending_txn_id`, id, endPos).Scan(&txnID)
	})
	if err != nil {
		return 0, fmt.Errorf("starting transaction for appservice %s: %w", id, err)
	}
	return txnID, nil
}

// AdvanceAppservice moves the cursor to pos after a delivered transaction
// (or a range with nothing for the appservice) and clears the pending one.
func (db *DB) AdvanceAppservice(ctx context.Context, id string, pos StreamPos, delivered bool) error {
	return db.Write(ctx, func(tx *Tx) error {
		q := `UPDATE appservice_state SET delivered_pos = $2, pending_txn_id = NULL, pending_end_pos = NULL WHERE appservice_id = $1 AND delivered_pos < $2`
		if delivered {
			q = `UPDATE appservice_state SET delivered_pos = $2, pending_txn_id = NULL, pending_end_pos = NULL,
				last_success_ts = $3, failures = 0 WHERE appservice_id = $1 AND delivered_pos <= $2`
			_, err := tx.Exec(ctx, q, id, pos, nowMillis())
			return err
		}
		_, err := tx.Exec(ctx, q, id, pos)
		return err
	})
}

// RecordAppserviceFailure notes a failed attempt (the pending transaction stays).
func (db *DB) RecordAppserviceFailure(ctx context.Context, id, reason string) error {
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `UPDATE appservice_state SET last_error = $2, last_error_ts = $3, failures = failures + 1 WHERE appservice_id = $1`,
			id, reason, nowMillis())
		return err
	})
}

// EventsAfter returns up to limit events after pos in stream order, with
// their positions no higher than upTo (0: no bound).
func (db *DB) EventsAfter(ctx context.Context, pos, upTo StreamPos, limit int) ([]*Event, error) {
	if upTo > 0 {
		return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE pos > $1 AND pos <= $2 ORDER BY pos LIMIT $3`, pos, upTo, limit))
	}
	return scanEvents(db.Query(ctx, `SELECT `+eventColumns+` FROM events WHERE pos > $1 ORDER BY pos LIMIT $2`, pos, limit))
}

// EventBacklog counts the events after pos and gives the origin time of the
// first one (0 when there is none): an appservice's queue depth and age.
func (db *DB) EventBacklog(ctx context.Context, pos StreamPos) (count int64, oldestTS int64, err error) {
	err = db.QueryRow(ctx, `SELECT COUNT(*), COALESCE(MIN(origin_ts), 0) FROM events WHERE pos > $1`, pos).Scan(&count, &oldestTS)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, nil
	}
	return count, oldestTS, err
}

// AccessTokenExists reports whether token hash belongs to a user's access token.
func (db *DB) AccessTokenExists(ctx context.Context, hash string) (bool, error) {
	var n int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM access_tokens WHERE token_hash = $1`, hash).Scan(&n)
	return n > 0, err
}

// SetUserAppservice hands an existing user to an appservice (its sender
// user, when the account existed before the registration).
func (db *DB) SetUserAppservice(ctx context.Context, userID, appserviceID, userType string) error {
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `UPDATE users SET appservice_id = $2, user_type = $3 WHERE user_id = $1`, userID, appserviceID, userType)
		return err
	})
}
