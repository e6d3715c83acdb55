package storage

import (
	"context"
	"errors"
	"fmt"
)

// RegistrationToken is a token that lets someone register while open
// registration is off (the m.login.registration_token stage).
type RegistrationToken struct {
	Token string
	// UsesAllowed is how many registrations may use it (nil: unlimited).
	UsesAllowed *int64
	// Pending counts registrations that passed the token stage and have
	// not finished yet; each holds a use until its session expires.
	Pending int64
	// Completed counts registrations that used it.
	Completed int64
	// ExpiryTime is when it stops working, in ms (nil: never).
	ExpiryTime *int64
}

// Valid reports whether the token may still be used at now (ms).
func (t *RegistrationToken) Valid(now int64) bool {
	if t.ExpiryTime != nil && *t.ExpiryTime <= now {
		return false
	}
	return t.UsesAllowed == nil || t.Pending+t.Completed < *t.UsesAllowed
}

// registrationTokenSQL selects the tokens with their live pending count;
// $1 is the current time in ms.
const registrationTokenSQL = `SELECT t.token, t.uses_allowed,
	(SELECT COUNT(*) FROM registration_token_reservations r WHERE r.token = t.token AND r.expires_ts > $1) AS pending,
	t.completed, t.expiry_time, t.created_ts FROM registration_tokens t`

func scanRegistrationToken(s scanner) (*RegistrationToken, error) {
	var t RegistrationToken
	var created int64
	if err := s.Scan(&t.Token, &t.UsesAllowed, &t.Pending, &t.Completed, &t.ExpiryTime, &created); err != nil {
		return nil, notFound(err)
	}
	return &t, nil
}

// InsertRegistrationToken creates a token; ErrAlreadyExists when it exists.
func (db *DB) InsertRegistrationToken(ctx context.Context, t RegistrationToken) error {
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_time, created_ts) VALUES ($1, $2, 0, $3, $4)`,
			t.Token, t.UsesAllowed, t.ExpiryTime, nowMillis())
		return err
	})
}

// RegistrationTokens lists the tokens, oldest first; valid (when set) keeps
// only the tokens that are (or are no longer) usable at now.
func (db *DB) RegistrationTokens(ctx context.Context, valid *bool, now int64) ([]*RegistrationToken, error) {
	q := `SELECT token, uses_allowed, pending, completed, expiry_time, created_ts FROM (` + registrationTokenSQL + `) info`
	const usable = `(expiry_time IS NULL OR expiry_time > $1) AND (uses_allowed IS NULL OR pending + completed < uses_allowed)`
	if valid != nil {
		if *valid {
			q += ` WHERE ` + usable
		} else {
			q += ` WHERE NOT (` + usable + `)`
		}
	}
	rows, err := db.adminQuery(ctx, q+` ORDER BY created_ts, token`, now)
	if err != nil {
		return nil, fmt.Errorf("listing registration tokens: %w", err)
	}
	defer rows.Close()
	var out []*RegistrationToken
	for rows.Next() {
		t, err := scanRegistrationToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RegistrationTokenByName loads one token; ErrNotFound if unknown.
func (db *DB) RegistrationTokenByName(ctx context.Context, token string, now int64) (*RegistrationToken, error) {
	return scanRegistrationToken(db.adminQueryRow(ctx, registrationTokenSQL+` WHERE t.token = $2`, now, token))
}

// RegistrationTokenUpdate says which fields of a token to change.
type RegistrationTokenUpdate struct {
	SetUsesAllowed bool
	UsesAllowed    *int64
	SetExpiryTime  bool
	ExpiryTime     *int64
}

// UpdateRegistrationToken changes a token and returns it; ErrNotFound if unknown.
func (db *DB) UpdateRegistrationToken(ctx context.Context, token string, u RegistrationTokenUpdate, now int64) (*RegistrationToken, error) {
	var out *RegistrationToken
	err := db.Write(ctx, func(tx *Tx) error {
		if u.SetUsesAllowed {
			if _, err := tx.Exec(ctx, `UPDATE registration_tokens SET uses_allowed = $1 WHERE token = $2`, u.UsesAllowed, token); err != nil {
				return err
			}
		}
		if u.SetExpiryTime {
			if _, err := tx.Exec(ctx, `UPDATE registration_tokens SET expiry_time = $1 WHERE token = $2`, u.ExpiryTime, token); err != nil {
				return err
			}
		}
		var err error
		out, err = scanRegistrationToken(tx.QueryRow(ctx, registrationTokenSQL+` WHERE t.token = $2`, now, token))
		return err
	})
	return out, err
}

// DeleteRegistrationToken deletes a token (and its reservations); ErrNotFound if unknown.
func (db *DB) DeleteRegistrationToken(ctx context.Context, token string) error {
	return db.Write(ctx, func(tx *Tx) error {
		res, err := tx.Exec(ctx, `DELETE FROM registration_tokens WHERE token = $1`, token)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		_, err = tx.Exec(ctx, `DELETE FROM registration_token_reservations WHERE token = $1`, token)
		return err
	})
}

// HasRegistrationTokens reports whether any registration token exists.
func (db *DB) HasRegistrationTokens(ctx context.Context) (bool, error) {
	var n int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM (SELECT 1 FROM registration_tokens LIMIT 1) t`).Scan(&n)
	return n > 0, err
}

// ReserveRegistrationToken lets the registration with UIA session sessionID
// use token: if the token is valid at now, one use is held for the session
// until expires (ms). Reserving again for the same session and token holds
// nothing more. It reports false when the token is unknown or not valid.
func (db *DB) ReserveRegistrationToken(ctx context.Context, sessionID, token string, now, expires int64) (bool, error) {
	ok := false
	err := db.Write(ctx, func(tx *Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM registration_token_reservations WHERE expires_ts <= $1`, now); err != nil {
			return err
		}
		var held string
		err := tx.QueryRow(ctx, `SELECT token FROM registration_token_reservations WHERE session_id = $1`, sessionID).Scan(&held)
		if err == nil && held == token {
			ok = true
			return nil
		}
		if err := notFound(err); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		t, err := scanRegistrationToken(tx.QueryRow(ctx, registrationTokenSQL+` WHERE t.token = $2`, now, token))
		if errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if !t.Valid(now) {
			return nil
		}
		if _, err := tx.Exec(ctx, `INSERT INTO registration_token_reservations (session_id, token, expires_ts) VALUES ($1, $2, $3)
			ON CONFLICT (session_id) DO UPDATE SET token = excluded.token, expires_ts = excluded.expires_ts`, sessionID, token, expires); err != nil {
			return err
		}
		ok = true
		return nil
	})
	return ok, err
}

// CompleteRegistrationToken turns the session's reservation (if any) into a
// completed use of its token.
func (db *DB) CompleteRegistrationToken(ctx context.Context, sessionID string) error {
	return db.Write(ctx, func(tx *Tx) error {
		var token string
		err := tx.QueryRow(ctx, `SELECT token FROM registration_token_reservations WHERE session_id = $1`, sessionID).Scan(&token)
		if err = notFound(err); errors.Is(err, ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM registration_token_reservations WHERE session_id = $1`, sessionID); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1`, token)
		return err
	})
}
