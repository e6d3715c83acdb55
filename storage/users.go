package storage

import (
	"context"
	"database/sql"
	"fmt"
)

// User is a local account.
type User struct {
	UserID       string
	Localpart    string
	PasswordHash string
	CreatedTS    int64
	IsGuest      bool
	IsAdmin      bool
	Deactivated  bool
	UserType     *string
	AppserviceID *string
	DisplayName  *string
	AvatarURL    *string
}

const userColumns = `user_id, localpart, password_hash, created_ts, is_guest, is_admin, deactivated, user_type, appservice_id, displayname, avatar_url`

func scanUser(s scanner) (*User, error) {
	var u User
	if err := s.Scan(&u.UserID, &u.Localpart, &u.PasswordHash, &u.CreatedTS, &u.IsGuest, &u.IsAdmin, &u.Deactivated,
		&u.UserType, &u.AppserviceID, &u.DisplayName, &u.AvatarURL); err != nil {
		return nil, notFound(err)
	}
	return &u, nil
}

// InsertUser creates an account; ErrAlreadyExists when the id is taken.
func (tx *Tx) InsertUser(ctx context.Context, u *User) error {
	_, err := tx.Exec(ctx, `INSERT INTO users (`+userColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		u.UserID, u.Localpart, u.PasswordHash, u.CreatedTS, u.IsGuest, u.IsAdmin, u.Deactivated, u.UserType, u.AppserviceID, u.DisplayName, u.AvatarURL)
	if err != nil {
		return fmt.Errorf("inserting user %s: %w", u.UserID, err)
	}
	return nil
}

// UserByID loads an account.
func (db *DB) UserByID(ctx context.Context, userID string) (*User, error) {
	return scanUser(db.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE user_id = $1`, userID))
}

// SetPasswordHash changes a user's password hash.
func (tx *Tx) SetPasswordHash(ctx context.Context, userID, hash string) error {
	_, err := tx.Exec(ctx, `UPDATE users SET password_hash = $1 WHERE user_id = $2`, hash, userID)
	return err
}

// SetDeactivated marks a user (de)activated and clears their password when deactivating.
func (tx *Tx) SetDeactivated(ctx context.Context, userID string, deactivated bool) error {
	q := `UPDATE users SET deactivated = $1 WHERE user_id = $2`
	if deactivated {
		q = `UPDATE users SET deactivated = $1, password_hash = '' WHERE user_id = $2`
	}
	_, err := tx.Exec(ctx, q, deactivated, userID)
	return err
}

// SetAdmin sets the admin flag.
func (tx *Tx) SetAdmin(ctx context.Context, userID string, admin bool) error {
	_, err := tx.Exec(ctx, `UPDATE users SET is_admin = $1 WHERE user_id = $2`, admin, userID)
	return err
}

// SetProfile updates the global display name and avatar.
func (tx *Tx) SetProfile(ctx context.Context, userID string, displayName, avatarURL *string) error {
	_, err := tx.Exec(ctx, `UPDATE users SET displayname = $1, avatar_url = $2 WHERE user_id = $3`, displayName, avatarURL, userID)
	return err
}

// SearchUsers finds users whose id or display name contains term (case-insensitive).
func (db *DB) SearchUsers(ctx context.Context, term string, limit int) ([]*User, error) {
	like := "%" + escapeLike(term) + "%"
	rows, err := db.Query(ctx, `SELECT `+userColumns+` FROM users WHERE deactivated = FALSE AND
		(LOWER(user_id) LIKE LOWER($1) ESCAPE '\' OR LOWER(COALESCE(displayname, '')) LIKE LOWER($1) ESCAPE '\') ORDER BY user_id LIMIT $2`, like, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

func escapeLike(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || s[i] == '_' || s[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// Device is a user's login session.
type Device struct {
	UserID      string
	DeviceID    string
	DisplayName *string
	CreatedTS   int64
	LastSeenTS  int64
	LastSeenIP  string
}

// UpsertDevice creates a device or keeps the existing one (a login may reuse a device id).
func (tx *Tx) UpsertDevice(ctx context.Context, d *Device) error {
	_, err := tx.Exec(ctx, `INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = COALESCE(excluded.display_name, devices.display_name)`,
		d.UserID, d.DeviceID, d.DisplayName, d.CreatedTS, d.LastSeenTS, d.LastSeenIP)
	return err
}

// DevicesOfUser lists a user's devices.
func (db *DB) DevicesOfUser(ctx context.Context, userID string) ([]*Device, error) {
	rows, err := db.Query(ctx, `SELECT user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip FROM devices WHERE user_id = $1 ORDER BY created_ts, device_id`, userID)
	return scanDevices(rows, err)
}

// DeviceByID loads one device.
func (db *DB) DeviceByID(ctx context.Context, userID, deviceID string) (*Device, error) {
	rows, err := db.Query(ctx, `SELECT user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip FROM devices WHERE user_id = $1 AND device_id = $2`, userID, deviceID)
	ds, err := scanDevices(rows, err)
	if err != nil {
		return nil, err
	}
	if len(ds) == 0 {
		return nil, ErrNotFound
	}
	return ds[0], nil
}

func scanDevices(rows *sql.Rows, err error) ([]*Device, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Device
	for rows.Next() {
		var d Device
		if err := rows.Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &d.CreatedTS, &d.LastSeenTS, &d.LastSeenIP); err != nil {
			return nil, err
		}
		out = append(out, &d)
	}
	return out, rows.Err()
}

// SetDeviceDisplayName renames a device.
func (tx *Tx) SetDeviceDisplayName(ctx context.Context, userID, deviceID string, name *string) error {
	res, err := tx.Exec(ctx, `UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3`, name, userID, deviceID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// TouchDevice records when and from where a device was last seen.
func (db *DB) TouchDevice(ctx context.Context, userID, deviceID, ip string, ts int64) error {
	return db.Write(ctx, func(tx *Tx) error {
		_, err := tx.Exec(ctx, `UPDATE devices SET last_seen_ts = $1, last_seen_ip = $2 WHERE user_id = $3 AND device_id = $4`, ts, ip, userID, deviceID)
		return err
	})
}

// DeleteDevice removes a device with its tokens, keys and pending to-device messages.
func (tx *Tx) DeleteDevice(ctx context.Context, userID, deviceID string) error {
	for _, q := range []string{
		`DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2`,
		`DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2`,
		`DELETE FROM device_keys WHERE user_id = $1 AND device_id = $2`,
		`DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2`,
		`DELETE FROM to_device WHERE user_id = $1 AND device_id = $2`,
		`DELETE FROM devices WHERE user_id = $1 AND device_id = $2`,
	} {
		if _, err := tx.Exec(ctx, q, userID, deviceID); err != nil {
			return fmt.Errorf("deleting device %s: %w", deviceID, err)
		}
	}
	return nil
}

// AccessToken is a stored (hashed) access token.
type AccessToken struct {
	TokenHash        string
	UserID           string
	DeviceID         string
	CreatedTS        int64
	ExpiresTS        int64 // 0 = never
	RefreshTokenHash *string
}

// InsertAccessToken stores a token hash.
func (tx *Tx) InsertAccessToken(ctx context.Context, t *AccessToken) error {
	_, err := tx.Exec(ctx, `INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts, refresh_token_hash) VALUES ($1, $2, $3, $4, $5, $6)`,
		t.TokenHash, t.UserID, t.DeviceID, t.CreatedTS, t.ExpiresTS, t.RefreshTokenHash)
	return err
}

// AccessTokenByHash looks a token up by its hash.
func (db *DB) AccessTokenByHash(ctx context.Context, hash string) (*AccessToken, error) {
	var t AccessToken
	err := db.QueryRow(ctx, `SELECT token_hash, user_id, device_id, created_ts, expires_ts, refresh_token_hash FROM access_tokens WHERE token_hash = $1`, hash).
		Scan(&t.TokenHash, &t.UserID, &t.DeviceID, &t.CreatedTS, &t.ExpiresTS, &t.RefreshTokenHash)
	if err != nil {
		return nil, notFound(err)
	}
	return &t, nil
}

// DeleteAccessToken revokes one access token.
func (tx *Tx) DeleteAccessToken(ctx context.Context, hash string) error {
	_, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE token_hash = $1`, hash)
	return err
}

// InsertRefreshToken stores a refresh token hash.
func (tx *Tx) InsertRefreshToken(ctx context.Context, hash, userID, deviceID string) error {
	_, err := tx.Exec(ctx, `INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)`, hash, userID, deviceID, nowMillis())
	return err
}

// RefreshTokenOwner returns the user and device of a refresh token.
func (tx *Tx) RefreshTokenOwner(ctx context.Context, hash string) (userID, deviceID string, err error) {
	err = tx.QueryRow(ctx, `SELECT user_id, device_id FROM refresh_tokens WHERE token_hash = $1`, hash).Scan(&userID, &deviceID)
	return userID, deviceID, notFound(err)
}

// DeleteRefreshToken revokes a refresh token and the access tokens issued with it.
func (tx *Tx) DeleteRefreshToken(ctx context.Context, hash string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE refresh_token_hash = $1`, hash); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE token_hash = $1`, hash)
	return err
}

// DeleteUserTokens revokes every access and refresh token of a user.
func (tx *Tx) DeleteUserTokens(ctx context.Context, userID string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM access_tokens WHERE user_id = $1`, userID); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM refresh_tokens WHERE user_id = $1`, userID)
	return err
}
