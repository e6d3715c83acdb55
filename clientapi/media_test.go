package clientapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentspace/agentspace/config"
)

// mediaRequest sends a raw request with an optional token and Content-Type
// and returns the response with its body read.
func mediaRequest(t *testing.T, method, url, token, contentType string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, raw
}

// mediaUpload uploads data and returns the media id.
func mediaUpload(t *testing.T, ts *testServer, token, contentType, filename string, data []byte) string {
	t.Helper()
	u := ts.URL + "/_matrix/media/v3/upload"
	if filename != "" {
		u += "?filename=" + url.QueryEscape(filename)
	}
	resp, raw := mediaRequest(t, "POST", u, token, contentType, bytes.NewReader(data))
	if resp.StatusCode != 200 {
		t.Fatalf("upload: %d %s", resp.StatusCode, raw)
	}
	var out struct {
		ContentURI string `json:"content_uri"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	prefix := "mxc://" + ts.cfg.ServerName + "/"
	if !strings.HasPrefix(out.ContentURI, prefix) {
		t.Fatalf("content_uri = %q", out.ContentURI)
	}
	return strings.TrimPrefix(out.ContentURI, prefix)
}

func mediaWantErr(t *testing.T, resp *http.Response, raw []byte, status int, errcode string) {
	t.Helper()
	var e struct {
		ErrCode string `json:"errcode"`
	}
	_ = json.Unmarshal(raw, &e)
	if resp.StatusCode != status || e.ErrCode != errcode {
		t.Fatalf("%s %s: got %d %s, want %d %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, raw, status, errcode)
	}
}

func TestMediaRoundTrip(t *testing.T) {
	ts := newTestServer(t)
	alice, tok := ts.createUser("alice")
	data := make([]byte, 100_000)
	_, _ = rand.Read(data)
	id := mediaUpload(t, ts, tok, "image/png", "cat picture.png", data)

	rec, err := ts.db.MediaByID(context.Background(), id)
	sum := sha256.Sum256(data)
	if err != nil || rec.SHA256 != hex.EncodeToString(sum[:]) || rec.SizeBytes != int64(len(data)) || rec.UserID != alice {
		t.Fatalf("media record = %+v, %v", rec, err)
	}

	check := func(path, token, wantDisposition string) {
		t.Helper()
		resp, raw := mediaRequest(t, "GET", ts.URL+path, token, "", nil)
		if resp.StatusCode != 200 || !bytes.Equal(raw, data) {
			t.Fatalf("GET %s: %d, %d bytes (want %d identical bytes)", path, resp.StatusCode, len(raw), len(data))
		}
		h := resp.Header
		for name, want := range map[string]string{
			"Content-Type":                 "image/png",
			"Content-Disposition":          wantDisposition,
			"Content-Security-Policy":      "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';",
			"Cross-Origin-Resource-Policy": "cross-origin",
		} {
			if got := h.Get(name); got != want {
				t.Errorf("GET %s: %s = %q, want %q", path, name, got, want)
			}
		}
	}
	server := ts.cfg.ServerName
	check("/_matrix/media/v3/download/"+server+"/"+id, "", `inline; filename="cat picture.png"`)
	check("/_matrix/media/r0/download/"+server+"/"+id, "", `inline; filename="cat picture.png"`)
	check("/_matrix/client/v1/media/download/"+server+"/"+id, tok, `inline; filename="cat picture.png"`)
	check("/_matrix/client/v1/media/download/"+server+"/"+id+"/other.png", tok, `inline; filename=other.png`)

	// Range requests work (seeking in audio/video).
	req, _ := http.NewRequest("GET", ts.URL+"/_matrix/media/v3/download/"+server+"/"+id, nil)
	req.Header.Set("Range", "bytes=10-19")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, data[10:20]) {
		t.Fatalf("range request: %d %d bytes", resp.StatusCode, len(part))
	}

	// Unsafe types download as attachments; non-ASCII names are encoded.
	htmlID := mediaUpload(t, ts, tok, "text/html", "naïve.html", []byte("<script>alert(1)</script>"))
	resp, _ = mediaRequest(t, "GET", ts.URL+"/_matrix/media/v3/download/"+server+"/"+htmlID, "", "", nil)
	if got := resp.Header.Get("Content-Disposition"); got != `attachment; filename*=utf-8''na%C3%AFve.html` {
		t.Fatalf("html Content-Disposition = %q", got)
	}
	// No Content-Type: octet-stream, attachment, no filename.
	rawID := mediaUpload(t, ts, tok, "", "", []byte("abc"))
	resp, raw := mediaRequest(t, "GET", ts.URL+"/_matrix/media/v3/download/"+server+"/"+rawID, "", "", nil)
	if resp.Header.Get("Content-Type") != "application/octet-stream" || resp.Header.Get("Content-Disposition") != "attachment" || string(raw) != "abc" {
		t.Fatalf("untyped download: %v %q", resp.Header, raw)
	}

	// Authentication: uploads and v1 downloads need a token.
	resp, raw = mediaRequest(t, "POST", ts.URL+"/_matrix/media/v3/upload", "", "text/plain", strings.NewReader("x"))
	mediaWantErr(t, resp, raw, 401, "M_MISSING_TOKEN")
	resp, raw = mediaRequest(t, "GET", ts.URL+"/_matrix/client/v1/media/download/"+server+"/"+id, "", "", nil)
	mediaWantErr(t, resp, raw, 401, "M_MISSING_TOKEN")
	resp, raw = mediaRequest(t, "GET", ts.URL+"/_matrix/client/v1/media/download/"+server+"/"+id, "bogus", "", nil)
	mediaWantErr(t, resp, raw, 401, "M_UNKNOWN_TOKEN")

	// Unknown media, other servers, malformed ids: 404.
	for _, p := range []string{
		"/_matrix/media/v3/download/" + server + "/doesNotExist",
		"/_matrix/media/v3/download/other.example/" + id,
		"/_matrix/media/v3/download/" + server + "/..%2F..%2Fetc",
		"/_matrix/client/v1/media/thumbnail/" + server + "/doesNotExist?width=32&height=32",
	} {
		resp, raw = mediaRequest(t, "GET", ts.URL+p, tok, "", nil)
		mediaWantErr(t, resp, raw, 404, "M_NOT_FOUND")
	}

	// Config and (unsupported) URL previews.
	for _, p := range []string{"/_matrix/media/v3/config", "/_matrix/client/v1/media/config"} {
		out := ts.mustDo(200, "GET", p, tok, nil)
		if out["m.upload.size"] != float64(ts.cfg.Media.MaxUploadBytes) {
			t.Fatalf("%s = %v", p, out)
		}
	}
	ts.wantErr(401, "M_MISSING_TOKEN", "GET", "/_matrix/client/v1/media/config", "", nil)
	ts.wantErr(404, "M_UNRECOGNIZED", "GET", "/_matrix/client/v1/media/preview_url?url=https://example.com", tok, nil)
}

func TestMediaUploadTooLarge(t *testing.T) {
	ts := newTestServer(t, func(c *config.Config) { c.Media.MaxUploadBytes = 1024 })
	_, tok := ts.createUser("alice")

	// Declared too large: refused up front.
	resp, raw := mediaRequest(t, "POST", ts.URL+"/_matrix/media/v3/upload", tok, "application/octet-stream", bytes.NewReader(make([]byte, 2048)))
	mediaWantErr(t, resp, raw, 413, "M_TOO_LARGE")
	// Streamed without a length: cut off while reading, nothing kept.
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write(make([]byte, 4096))
		pw.Close()
	}()
	resp, raw = mediaRequest(t, "POST", ts.URL+"/_matrix/media/r0/upload", tok, "application/octet-stream", pr)
	mediaWantErr(t, resp, raw, 413, "M_TOO_LARGE")
	var files []string
	_ = filepath.WalkDir(ts.cfg.MediaDir(), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) != 0 {
		t.Fatalf("oversized uploads left files: %v", files)
	}
	// At the limit is fine.
	mediaUpload(t, ts, tok, "application/octet-stream", "", make([]byte, 1024))
}

func TestMediaThumbnail(t *testing.T) {
	ts := newTestServer(t)
	_, tok := ts.createUser("alice")
	img := image.NewRGBA(image.Rect(0, 0, 400, 200))
	for x := 0; x < 400; x++ {
		for y := 0; y < 200; y++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), 128, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	id := mediaUpload(t, ts, tok, "image/png", "gradient.png", buf.Bytes())
	server := ts.cfg.ServerName

	thumb := func(path, token string) (image.Image, []byte) {
		t.Helper()
		resp, raw := mediaRequest(t, "GET", ts.URL+path, token, "", nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
			t.Fatalf("GET %s: %d %s %.200s", path, resp.StatusCode, resp.Header.Get("Content-Type"), raw)
		}
		if resp.Header.Get("Cross-Origin-Resource-Policy") != "cross-origin" {
			t.Fatalf("thumbnail lacks CORP header: %v", resp.Header)
		}
		im, err := png.Decode(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("thumbnail is not a PNG: %v", err)
		}
		return im, raw
	}
	for _, tc := range []struct {
		query        string
		wantW, wantH int
	}{
		{"width=100&height=100&method=scale", 100, 50},  // fits the box, keeps 2:1
		{"width=100&height=100", 100, 50},               // scale is the default
		{"width=64&height=64&method=crop", 64, 64},      // fills the box exactly
		{"width=800&height=600&method=scale", 400, 200}, // never enlarged
		{"width=1000&height=100&method=crop", 400, 40},  // largest box of that aspect
	} {
		im, _ := thumb("/_matrix/media/v3/thumbnail/"+server+"/"+id+"?"+tc.query, "")
		if b := im.Bounds(); b.Dx() != tc.wantW || b.Dy() != tc.wantH {
			t.Errorf("%s: thumbnail %dx%d, want %dx%d", tc.query, b.Dx(), b.Dy(), tc.wantW, tc.wantH)
		}
	}
	// Cached on disk, and served again identically through v1.
	_, first := thumb("/_matrix/media/v3/thumbnail/"+server+"/"+id+"?width=64&height=64&method=crop", "")
	cached, _ := filepath.Glob(filepath.Join(ts.cfg.MediaDir(), "thumbnails", "*", "*", id, "64x64-crop.png"))
	if len(cached) != 1 {
		t.Fatalf("no cached thumbnail file under %s", ts.cfg.MediaDir())
	}
	_, second := thumb("/_matrix/client/v1/media/thumbnail/"+server+"/"+id+"?width=64&height=64&method=crop", tok)
	if !bytes.Equal(first, second) {
		t.Fatal("cached thumbnail differs")
	}

	// Errors.
	base := ts.URL + "/_matrix/client/v1/media/thumbnail/" + server + "/" + id
	resp, raw := mediaRequest(t, "GET", base+"?width=64&height=64", "", "", nil)
	mediaWantErr(t, resp, raw, 401, "M_MISSING_TOKEN")
	resp, raw = mediaRequest(t, "GET", base+"?height=64", tok, "", nil)
	mediaWantErr(t, resp, raw, 400, "M_MISSING_PARAM")
	resp, raw = mediaRequest(t, "GET", base+"?width=-1&height=64", tok, "", nil)
	mediaWantErr(t, resp, raw, 400, "M_INVALID_PARAM")
	resp, raw = mediaRequest(t, "GET", base+"?width=64&height=64&method=stretch", tok, "", nil)
	mediaWantErr(t, resp, raw, 400, "M_INVALID_PARAM")
	textID := mediaUpload(t, ts, tok, "text/plain", "notes.txt", []byte("hello"))
	resp, raw = mediaRequest(t, "GET", ts.URL+"/_matrix/client/v1/media/thumbnail/"+server+"/"+textID+"?width=64&height=64", tok, "", nil)
	mediaWantErr(t, resp, raw, 400, "M_UNKNOWN")
	brokenID := mediaUpload(t, ts, tok, "image/png", "broken.png", []byte("not a png"))
	resp, raw = mediaRequest(t, "GET", ts.URL+"/_matrix/client/v1/media/thumbnail/"+server+"/"+brokenID+"?width=64&height=64", tok, "", nil)
	mediaWantErr(t, resp, raw, 400, "M_UNKNOWN")
}
