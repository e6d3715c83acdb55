package clientapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"maunium.net/go/mautrix"

	"github.com/agentspace/agentspace/media"
	"github.com/agentspace/agentspace/storage"
)

// The content repository (spec: "Content repository"). Uploads go to
// /_matrix/media/v3/upload (there is no v1 upload). Downloads and thumbnails
// are served twice: the legacy /_matrix/media/v3 (and r0) paths without
// authentication, as the spec still describes them, and the authenticated
// /_matrix/client/v1/media paths. We do not federate, so media of other
// servers is always 404. URL previews are not offered (no outbound
// network): /preview_url answers 404 M_UNRECOGNIZED.
//
// Thumbnails are made for PNG, JPEG, GIF (first frame) and WebP; for any
// other type the thumbnail endpoints answer 400 M_UNKNOWN, as the spec lists
// for content "the server cannot thumbnail" (clients then fall back to the
// download or a placeholder).

// mediaLegacyPrefixes are the unauthenticated media API versions.
var mediaLegacyPrefixes = []string{"/_matrix/media/v3", "/_matrix/media/r0"}

// isUploadPath reports whether p is an upload endpoint, which gets the
// media size limit instead of the JSON body limit.
func isUploadPath(p string) bool {
	for _, prefix := range mediaLegacyPrefixes {
		if p == prefix+"/upload" {
			return true
		}
	}
	return false
}

// mediaAPI holds the media handlers' dependencies.
type mediaAPI struct {
	*API
	store *media.Store
}

func (a *API) registerMedia(rt routes) {
	m := &mediaAPI{API: a, store: media.NewStore(a.cfg.MediaDir())}
	for _, p := range mediaLegacyPrefixes {
		rt.exact(p+"/upload", m.mediaAuthed(a.rateLimited(m.handleUpload)), http.MethodPost)
		rt.exact(p+"/download/{serverName}/{mediaId}", a.public(m.handleDownload), http.MethodGet)
		rt.exact(p+"/download/{serverName}/{mediaId}/{fileName}", a.public(m.handleDownload), http.MethodGet)
		rt.exact(p+"/thumbnail/{serverName}/{mediaId}", a.public(m.handleThumbnail), http.MethodGet)
		rt.exact(p+"/config", m.mediaAuthed(m.handleConfig), http.MethodGet)
		rt.exact(p+"/preview_url", a.public(handlePreviewURL), http.MethodGet)
	}
	rt.v1("/media/download/{serverName}/{mediaId}", m.mediaAuthed(m.handleDownload), http.MethodGet)
	rt.v1("/media/download/{serverName}/{mediaId}/{fileName}", m.mediaAuthed(m.handleDownload), http.MethodGet)
	rt.v1("/media/thumbnail/{serverName}/{mediaId}", m.mediaAuthed(m.handleThumbnail), http.MethodGet)
	rt.v1("/media/config", m.mediaAuthed(m.handleConfig), http.MethodGet)
	rt.v1("/media/preview_url", a.public(handlePreviewURL), http.MethodGet)
}

// mediaAuthed requires a valid access token. Unlike authed it admits guests:
// they must be able to see and send images in rooms they may read (Synapse
// allows guests on every media endpoint).
func (m *mediaAPI) mediaAuthed(h handler) http.Handler {
	return m.wrap(func(w http.ResponseWriter, r *http.Request) error {
		s, err := m.authenticate(r)
		if err != nil {
			return err
		}
		return h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
	})
}

// mediaVar returns a decoded path variable (the router works on the
// escaped path).
func mediaVar(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(mux.Vars(r)[name])
	if err != nil {
		return "", badParam("Invalid %s in path", name)
	}
	return v, nil
}

// maxUploadNameBytes caps the stored file name.
const maxUploadNameBytes = 255

func (m *mediaAPI) handleUpload(w http.ResponseWriter, r *http.Request) error {
	s := sessionFrom(r.Context())
	var uploadName *string
	if name := r.URL.Query().Get("filename"); name != "" {
		clean, err := sanitizeFileName(name)
		if err != nil {
			return err
		}
		uploadName = &clean
	}
	contentType := sanitizeContentType(r.Header.Get("Content-Type"))

	id := media.NewID()
	saved, err := m.store.Save(id, r.Body)
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return mautrix.MTooLarge.WithMessage("Upload is larger than %d bytes", maxBytes.Limit)
		}
		return fmt.Errorf("saving upload: %w", err)
	}
	rec := &storage.Media{
		MediaID:     id,
		ContentType: contentType,
		SizeBytes:   saved.Size,
		UploadName:  uploadName,
		UserID:      s.UserID,
		CreatedTS:   time.Now().UnixMilli(),
		SHA256:      saved.SHA256,
	}
	if err := m.db.Write(r.Context(), func(tx *storage.Tx) error { return tx.InsertMedia(r.Context(), rec) }); err != nil {
		if rmErr := m.store.Remove(id); rmErr != nil {
			m.log.ErrorContext(r.Context(), "removing orphaned media file", "media_id", id, "err", rmErr)
		}
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"content_uri": "mxc://" + m.cfg.ServerName + "/" + id})
}

// sanitizeFileName checks an upload's file name: valid UTF-8, no control
// characters (they would end up in a header), no path (only the last
// component is kept), bounded length.
func sanitizeFileName(name string) (string, error) {
	if !utf8.ValidString(name) {
		return "", badParam("filename must be valid UTF-8")
	}
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, name)
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	for len(name) > maxUploadNameBytes {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	return name, nil
}

// sanitizeContentType normalises the uploaded Content-Type. Like Synapse we
// accept any type, but store it re-formatted from its parsed form (so no
// junk reaches the download headers); what does not parse is stored as
// application/octet-stream, which downloads as an attachment.
func sanitizeContentType(ct string) string {
	const fallback = "application/octet-stream"
	if strings.TrimSpace(ct) == "" {
		return fallback
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !strings.Contains(mt, "/") {
		return fallback
	}
	if out := mime.FormatMediaType(mt, params); out != "" {
		return out
	}
	return mt
}

// lookupMedia resolves the serverName/mediaId of a download or thumbnail
// request to our record; 404 for other servers and unknown ids.
func (m *mediaAPI) lookupMedia(r *http.Request) (*storage.Media, error) {
	server, err := mediaVar(r, "serverName")
	if err != nil {
		return nil, err
	}
	id, err := mediaVar(r, "mediaId")
	if err != nil {
		return nil, err
	}
	if server != m.cfg.ServerName {
		// We do not federate: remote media cannot be fetched.
		return nil, mautrix.MNotFound.WithMessage("Remote media is not available on this server")
	}
	if !media.ValidID(id) {
		return nil, mautrix.MNotFound.WithMessage("Media not found")
	}
	rec, err := m.db.MediaByID(r.Context(), id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mautrix.MNotFound.WithMessage("Media not found")
	} else if err != nil {
		return nil, fmt.Errorf("looking up media %s: %w", id, err)
	}
	return rec, nil
}

func (m *mediaAPI) handleDownload(w http.ResponseWriter, r *http.Request) error {
	rec, err := m.lookupMedia(r)
	if err != nil {
		return err
	}
	name := ""
	if rec.UploadName != nil {
		name = *rec.UploadName
	}
	if _, ok := mux.Vars(r)["fileName"]; ok {
		if name, err = mediaVar(r, "fileName"); err != nil {
			return err
		}
		if name, err = sanitizeFileName(name); err != nil {
			return err
		}
	}
	f, err := m.store.Open(rec.MediaID)
	if err != nil {
		return fmt.Errorf("media %s is recorded but its file is unreadable: %w", rec.MediaID, err)
	}
	defer f.Close()
	setMediaHeaders(w, rec.ContentType, name)
	// ServeContent answers Range requests (seeking in audio and video).
	http.ServeContent(w, r, "", time.UnixMilli(rec.CreatedTS), f)
	return nil
}

func (m *mediaAPI) handleThumbnail(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	width, err := thumbnailDim(q, "width")
	if err != nil {
		return err
	}
	height, err := thumbnailDim(q, "height")
	if err != nil {
		return err
	}
	method := q.Get("method")
	if method == "" {
		method = media.MethodScale
	}
	if method != media.MethodScale && method != media.MethodCrop {
		return badParam("method must be crop or scale")
	}
	if a := q.Get("animated"); a != "" && a != "true" && a != "false" {
		return badParam("animated must be true or false")
	}
	rec, err := m.lookupMedia(r)
	if err != nil {
		return err
	}
	// animated=true is a preference: we have no animated thumbnails, and
	// the spec says to return a static one then.
	t, err := m.store.Thumbnail(r.Context(), rec.MediaID, rec.ContentType, width, height, method)
	switch {
	case errors.Is(err, media.ErrNotThumbnailable):
		return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Cannot generate thumbnails for content of type %s", rec.ContentType)
	case errors.Is(err, media.ErrImageTooLarge):
		return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Image is too large to thumbnail")
	case errors.Is(err, media.ErrUndecodable):
		return mautrix.MUnknown.WithStatus(http.StatusBadRequest).WithMessage("Image could not be decoded")
	case err != nil:
		return fmt.Errorf("thumbnailing %s: %w", rec.MediaID, err)
	}
	ext := "png"
	if t.ContentType == "image/jpeg" {
		ext = "jpg"
	}
	setMediaHeaders(w, t.ContentType, "thumbnail."+ext)
	http.ServeContent(w, r, "", t.ModTime, bytes.NewReader(t.Data))
	return nil
}

// thumbnailDim parses a required positive integer query parameter.
func thumbnailDim(q url.Values, name string) (int, error) {
	v := q.Get(name)
	if v == "" {
		return 0, missingParam("Missing %s parameter", name)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, badParam("%s must be a positive integer", name)
	}
	return n, nil
}

func (m *mediaAPI) handleConfig(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, map[string]int64{"m.upload.size": m.cfg.Media.MaxUploadBytes})
}

func handlePreviewURL(w http.ResponseWriter, r *http.Request) error {
	return mautrix.MUnrecognized.WithStatus(http.StatusNotFound).WithMessage("URL previews are not supported by this server")
}

// inlineContentTypes may be shown in the browser; everything else is
// served as an attachment so uploaded HTML or SVG can never run script in
// the server's origin. The list is Synapse's.
var inlineContentTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true,
	"application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true, "image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true, "audio/ogg": true,
	"audio/wave": true, "audio/wav": true, "audio/x-wav": true, "audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// textContentTypes get a charset when the uploader gave none, so browsers
// do not guess one.
var textContentTypes = map[string]bool{"text/css": true, "text/csv": true, "text/plain": true}

// setMediaHeaders sets the headers of a download or thumbnail response
// (spec: "Content repository", security considerations).
func setMediaHeaders(w http.ResponseWriter, contentType, fileName string) {
	h := w.Header()
	base, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		base, contentType = "application/octet-stream", "application/octet-stream"
	}
	if textContentTypes[base] && !strings.Contains(strings.ToLower(contentType), "charset") {
		contentType += "; charset=UTF-8"
	}
	h.Set("Content-Type", contentType)
	disposition := "attachment"
	if inlineContentTypes[base] {
		disposition = "inline"
	}
	if fileName != "" {
		// FormatMediaType quotes the name, or uses RFC 2231 encoding for
		// non-ASCII names; it returns "" for names it cannot encode.
		if d := mime.FormatMediaType(disposition, map[string]string{"filename": fileName}); d != "" {
			disposition = d
		}
	}
	h.Set("Content-Disposition", disposition)
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	h.Set("X-Content-Type-Options", "nosniff")
	// Media never changes once uploaded.
	h.Set("Cache-Control", "private, max-age=86400, immutable")
}
