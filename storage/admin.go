package storage

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// This file holds the queries of the admin API's user endpoints
// (package adminapi); admin_rooms.go and admin_regtokens.go hold the rest.

// adminQuery runs a read query without the prepared-statement cache: the
// admin API builds many variants of one query (filters, orderings), which
// would otherwise fill the cache that the hot client paths rely on.
func (db *DB) adminQuery(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return db.read.QueryContext(ctx, db.rebind(query), args...)
}

func (db *DB) adminQueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return db.read.QueryRowContext(ctx, db.rebind(query), args...)
}

// AdminUser is a user as the admin API shows it: the account plus the
// fields only administrators see.
type AdminUser struct {
	User
	Erased bool
	// LastSeenTS is the newest last_seen_ts of the user's devices (nil: none).
	LastSeenTS *int64
}

// lastSeenExpr is a user's newest device activity.
const lastSeenExpr = `(SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = u.user_id AND d.last_seen_ts > 0)`

const adminUserColumns = `u.user_id, u.localpart, u.password_hash, u.created_ts, u.is_guest, u.is_admin, u.deactivated,
	u.user_type, u.appservice_id, u.displayname, u.avatar_url, u.erased, ` + lastSeenExpr

func scanAdminUser(s scanner) (*AdminUser, error) {
	var u AdminUser
	if err := s.Scan(&u.UserID, &u.Localpart, &u.PasswordHash, &u.CreatedTS, &u.IsGuest, &u.IsAdmin, &u.Deactivated,
		&u.UserType, &u.AppserviceID, &u.DisplayName, &u.AvatarURL, &u.Erased, &u.LastSeenTS); err != nil {
		return nil, notFound(err)
	}
	return &u, nil
}

// AdminUserByID loads one user with the admin-only fields; ErrNotFound if unknown.
func (db *DB) AdminUserByID(ctx context.Context, userID string) (*AdminUser, error) {
	return scanAdminUser(db.adminQueryRow(ctx, `SELECT `+adminUserColumns+` FROM users u WHERE u.user_id = $1`, userID))
}

// UserListQuery selects and orders the users of GET /_synapse/admin/v2/users.
type UserListQuery struct {
	From, Limit int
	// UserID keeps users whose id contains it (ignored when Name is set).
	UserID string
	// Name keeps users whose id or display name contains it (case-insensitive).
	Name string
	// ExcludeGuests drops guest accounts.
	ExcludeGuests bool
	// Deactivated: nil lists everyone, else only users with that state.
	Deactivated *bool
	// Admins: nil lists everyone, else only (non-)admins.
	Admins *bool
	// AdminLocalparts are the configured admins (config admin_users): they
	// count as admins for the filter, the ordering and the result.
	AdminLocalparts []string
	// UserTypes keeps only these user types ("" stands for users without one).
	UserTypes []string
	// NotUserTypes drops these user types ("" stands for users without one).
	NotUserTypes []string
	// OrderBy is one of UserOrderColumns' keys ("" = name).
	OrderBy   string
	Backwards bool
}

// UserOrderColumns maps the admin API's order_by values to SQL.
var UserOrderColumns = map[string]string{
	"name":          "u.user_id",
	"displayname":   "LOWER(u.displayname)",
	"is_guest":      "u.is_guest",
	"admin":         "", // computed: is_admin or listed in the config
	"deactivated":   "u.deactivated",
	"user_type":     "u.user_type",
	"avatar_url":    "u.avatar_url",
	"shadow_banned": "FALSE",
	"creation_ts":   "u.created_ts",
	"last_seen_ts":  lastSeenExpr,
	"locked":        "FALSE",
}

// nullableOrder orders by col the way PostgreSQL does by default on both
// engines: NULLs after every value ascending, before them descending.
func nullableOrder(col string, desc bool) string {
	if desc {
		return col + " IS NULL DESC, " + col + " DESC"
	}
	return col + " IS NULL ASC, " + col + " ASC"
}

// adminExpression is the SQL for "is an admin": flagged in the database or
// listed in the configuration. The localparts are inlined as quoted
// literals (so that the expression can appear in queries with different
// parameter lists); they are validated localparts, quoted all the same.
func adminExpression(localparts []string) string {
	if len(localparts) == 0 {
		return "u.is_admin"
	}
	lits := make([]string, len(localparts))
	for i, lp := range localparts {
		lits[i] = "'" + strings.ReplaceAll(lp, "'", "''") + "'"
	}
	return "(u.is_admin OR u.localpart IN (" + strings.Join(lits, ", ") + "))"
}

// ListUsers returns one page of users and how many match in total.
func (db *DB) ListUsers(ctx context.Context, q UserListQuery) ([]*AdminUser, int, error) {
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	adminExpr := adminExpression(q.AdminLocalparts)
	switch {
	case q.Name != "":
		like := arg(LikeContains(strings.ToLower(q.Name)))
		where = append(where, `(LOWER(u.user_id) LIKE `+like+` ESCAPE '\' OR LOWER(COALESCE(u.displayname, '')) LIKE `+like+` ESCAPE '\')`)
	case q.UserID != "":
		where = append(where, `u.user_id LIKE `+arg(LikeContains(q.UserID))+` ESCAPE '\'`)
	}
	if q.ExcludeGuests {
		where = append(where, "u.is_guest = FALSE")
	}
	if q.Deactivated != nil {
		where = append(where, "u.deactivated = "+arg(*q.Deactivated))
	}
	if q.Admins != nil {
		if *q.Admins {
			where = append(where, adminExpr)
		} else {
			where = append(where, "NOT "+adminExpr)
		}
	}
	typeCond := func(types []string) string {
		var conds []string
		var named []string
		for _, t := range types {
			if t == "" {
				conds = append(conds, "u.user_type IS NULL")
			} else {
				named = append(named, arg(t))
			}
		}
		if len(named) > 0 {
			conds = append(conds, "u.user_type IN ("+strings.Join(named, ", ")+")")
		}
		return "(" + strings.Join(conds, " OR ") + ")"
	}
	if len(q.UserTypes) > 0 {
		where = append(where, typeCond(q.UserTypes))
	}
	if len(q.NotUserTypes) > 0 {
		// Spelled out rather than NOT (...): user_type IN (...) is NULL, not
		// false, for users without a type.
		var named []string
		for _, t := range q.NotUserTypes {
			if t == "" {
				where = append(where, "u.user_type IS NOT NULL")
			} else {
				named = append(named, arg(t))
			}
		}
		if len(named) > 0 {
			where = append(where, "(u.user_type IS NULL OR u.user_type NOT IN ("+strings.Join(named, ", ")+"))")
		}
	}
	whereSQL := ""
	if len(where) > 0 {
		whereSQL = " WHERE " + strings.Join(where, " AND ")
	}

	var total int
	if err := db.adminQueryRow(ctx, `SELECT COUNT(*) FROM users u`+whereSQL, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("counting users: %w", err)
	}

	col, ok := UserOrderColumns[q.OrderBy]
	switch {
	case !ok || col == "FALSE":
		col = "u.user_id" // nobody is shadow-banned or locked: the order is by name
	case q.OrderBy == "admin":
		col = adminExpr
	}
	order := nullableOrder(col, q.Backwards)
	if col != "u.user_id" {
		order += ", u.user_id ASC" // Synapse: ties always by ascending name
	}
	limit, offset := arg(q.Limit), arg(q.From)
	rows, err := db.adminQuery(ctx, `SELECT `+adminUserColumns+`, `+adminExpr+` AS effective_admin FROM users u`+whereSQL+
		` ORDER BY `+order+` LIMIT `+limit+` OFFSET `+offset, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("listing users: %w", err)
	}
	defer rows.Close()
	var out []*AdminUser
	for rows.Next() {
		var u AdminUser
		if err := rows.Scan(&u.UserID, &u.Localpart, &u.PasswordHash, &u.CreatedTS, &u.IsGuest, &u.IsAdmin, &u.Deactivated,
			&u.UserType, &u.AppserviceID, &u.DisplayName, &u.AvatarURL, &u.Erased, &u.LastSeenTS, &u.IsAdmin); err != nil {
			return nil, 0, err
		}
		out = append(out, &u)
	}
	return out, total, rows.Err()
}

// SetUserType sets or (nil) clears a user's type.
func (tx *Tx) SetUserType(ctx context.Context, userID string, userType *string) error {
	_, err := tx.Exec(ctx, `UPDATE users SET user_type = $1 WHERE user_id = $2`, userType, userID)
	return err
}

// SetErased records that a deactivated user asked to be forgotten.
func (tx *Tx) SetErased(ctx context.Context, userID string, erased bool) error {
	_, err := tx.Exec(ctx, `UPDATE users SET erased = $1 WHERE user_id = $2`, erased, userID)
	return err
}
