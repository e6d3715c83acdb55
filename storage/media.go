package storage

import (
	"context"
	"fmt"
)

// Media is the record of one uploaded file of the content repository; the
// bytes live on disk under the media directory, named by MediaID.
type Media struct {
	MediaID     string
	ContentType string
	SizeBytes   int64
	UploadName  *string
	UserID      string
	CreatedTS   int64
	SHA256      string // hex
}

// InsertMedia records an upload; ErrAlreadyExists if the id is taken.
func (tx *Tx) InsertMedia(ctx context.Context, m *Media) error {
	_, err := tx.Exec(ctx, `INSERT INTO media (media_id, content_type, size_bytes, upload_name, user_id, created_ts, sha256)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		m.MediaID, m.ContentType, m.SizeBytes, m.UploadName, m.UserID, m.CreatedTS, m.SHA256)
	if err != nil {
		return fmt.Errorf("recording media %s: %w", m.MediaID, err)
	}
	return nil
}

// MediaByID loads an upload's record; ErrNotFound when there is none.
func (db *DB) MediaByID(ctx context.Context, mediaID string) (*Media, error) {
	var m Media
	err := db.QueryRow(ctx, `SELECT media_id, content_type, size_bytes, upload_name, user_id, created_ts, sha256 FROM media WHERE media_id = $1`, mediaID).
		Scan(&m.MediaID, &m.ContentType, &m.SizeBytes, &m.UploadName, &m.UserID, &m.CreatedTS, &m.SHA256)
	if err != nil {
		return nil, notFound(err)
	}
	return &m, nil
}
