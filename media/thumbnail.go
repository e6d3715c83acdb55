package media

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // registers the GIF decoder (thumbnails use the first frame)
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/image/draw"
	_ "golang.org/x/image/webp" // registers the WebP decoder
)

// Thumbnail methods (spec: "Thumbnails").
const (
	// MethodScale keeps the aspect ratio and fits the image inside the box.
	MethodScale = "scale"
	// MethodCrop fills the box exactly, cutting off what sticks out.
	MethodCrop = "crop"
)

const (
	// MaxThumbnailDimension caps a requested width or height; larger
	// requests get a thumbnail of at most this size.
	MaxThumbnailDimension = 2048
	// maxSourcePixels refuses to decode larger images (decompression bombs:
	// a small PNG can declare a huge canvas). Synapse's default is the same.
	maxSourcePixels = 32_000_000
	// maxCachedPerMedia bounds the thumbnails kept on disk per upload, so
	// requests for many odd sizes cannot fill the disk; others are made
	// on the fly.
	maxCachedPerMedia = 32
)

// Errors of Thumbnail.
var (
	ErrNotThumbnailable = errors.New("content type cannot be thumbnailed")
	ErrImageTooLarge    = errors.New("image too large to thumbnail")
	ErrUndecodable      = errors.New("image could not be decoded")
)

// thumbnailable maps the source types we decode to the type of thumbnail
// produced: JPEG stays JPEG (photos), the rest become PNG (keeps alpha).
var thumbnailable = map[string]string{
	"image/jpeg": "image/jpeg",
	"image/jpg":  "image/jpeg",
	"image/png":  "image/png",
	"image/gif":  "image/png",
	"image/webp": "image/png",
}

// Thumbnailable reports whether thumbnails can be made of contentType.
func Thumbnailable(contentType string) bool {
	_, ok := thumbnailable[baseType(contentType)]
	return ok
}

func baseType(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return strings.ToLower(strings.TrimSpace(contentType))
	}
	return mt
}

// Thumb is a generated (or cached) thumbnail.
type Thumb struct {
	ContentType string
	Data        []byte
	ModTime     time.Time
}

// thumbDir holds the cached thumbnails of id.
func (s *Store) thumbDir(id string) string {
	return filepath.Join(s.dir, "thumbnails", shard(id), id)
}

// Thumbnail returns a thumbnail of media id (of type contentType) for a
// width×height box: MethodScale fits the image inside the box keeping its
// aspect ratio; MethodCrop fills the box and crops the overflow, centred.
// Images are never enlarged: a box bigger than the image yields the image's
// own size (for crop, the largest box of the requested aspect ratio).
// Results are cached on disk.
func (s *Store) Thumbnail(ctx context.Context, id, contentType string, width, height int, method string) (*Thumb, error) {
	if !ValidID(id) {
		return nil, ErrInvalidID
	}
	if method != MethodScale && method != MethodCrop {
		return nil, fmt.Errorf("unknown thumbnail method %q", method)
	}
	if width <= 0 || height <= 0 {
		return nil, fmt.Errorf("thumbnail size %dx%d must be positive", width, height)
	}
	outType, ok := thumbnailable[baseType(contentType)]
	if !ok {
		return nil, ErrNotThumbnailable
	}
	width, height = min(width, MaxThumbnailDimension), min(height, MaxThumbnailDimension)
	ext := ".png"
	if outType == "image/jpeg" {
		ext = ".jpg"
	}
	dir := s.thumbDir(id)
	cached := filepath.Join(dir, fmt.Sprintf("%dx%d-%s%s", width, height, method, ext))
	if data, err := os.ReadFile(cached); err == nil {
		st, _ := os.Stat(cached)
		t := &Thumb{ContentType: outType, Data: data}
		if st != nil {
			t.ModTime = st.ModTime()
		}
		return t, nil
	}

	select {
	case s.thumbSlots <- struct{}{}:
		defer func() { <-s.thumbSlots }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	src, err := s.Open(id)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	img, err := decodeBounded(src)
	if err != nil {
		return nil, err
	}
	out := resize(img, width, height, method)
	var buf bytes.Buffer
	if outType == "image/jpeg" {
		err = jpeg.Encode(&buf, out, &jpeg.Options{Quality: 85})
	} else {
		err = (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&buf, out)
	}
	if err != nil {
		return nil, fmt.Errorf("encoding thumbnail of %s: %w", id, err)
	}
	t := &Thumb{ContentType: outType, Data: buf.Bytes(), ModTime: time.Now()}
	if entries, _ := os.ReadDir(dir); len(entries) < maxCachedPerMedia {
		// A failed cache write only costs a regeneration next time.
		_ = writeAtomic(dir, cached, t.Data)
	}
	return t, nil
}

// decodeBounded decodes an image after checking its declared size.
func decodeBounded(r io.ReadSeeker) (image.Image, error) {
	cfg, _, err := image.DecodeConfig(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUndecodable, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, ErrUndecodable
	}
	if int64(cfg.Width)*int64(cfg.Height) > maxSourcePixels {
		return nil, ErrImageTooLarge
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewinding image: %w", err)
	}
	img, _, err := image.Decode(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUndecodable, err)
	}
	return img, nil
}

// resize scales (and for crop, cuts) img to fit a width×height box.
func resize(img image.Image, width, height int, method string) image.Image {
	b := img.Bounds()
	ow, oh := float64(b.Dx()), float64(b.Dy())
	w, h := float64(width), float64(height)
	srcRect := b
	var tw, th int
	switch method {
	case MethodCrop:
		// Scale so the box is covered, then cut the overflow. If that
		// would enlarge the image, cut a box of the requested aspect
		// ratio from the original instead.
		s := math.Max(w/ow, h/oh)
		cw, ch := int(math.Round(w/s)), int(math.Round(h/s))
		cw, ch = clamp(cw, 1, b.Dx()), clamp(ch, 1, b.Dy())
		x0 := b.Min.X + (b.Dx()-cw)/2
		y0 := b.Min.Y + (b.Dy()-ch)/2
		srcRect = image.Rect(x0, y0, x0+cw, y0+ch)
		if s >= 1 {
			tw, th = cw, ch
		} else {
			tw, th = width, height
		}
	default:
		r := math.Min(1, math.Min(w/ow, h/oh))
		tw = clamp(int(math.Round(ow*r)), 1, width)
		th = clamp(int(math.Round(oh*r)), 1, height)
	}
	dst := image.NewRGBA(image.Rect(0, 0, tw, th))
	draw.CatmullRom.Scale(dst, dst.Bounds(), img, srcRect, draw.Src, nil)
	return dst
}

func clamp(v, lo, hi int) int { return max(lo, min(v, hi)) }

// writeAtomic writes data to path through a temporary file and a rename.
func writeAtomic(dir, path string, data []byte) error {
	f, err := createTemp(dir, "thumb")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("caching thumbnail: %w", err)
	}
	return nil
}
