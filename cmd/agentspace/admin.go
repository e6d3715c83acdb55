package main

// admin.go implements "agentspace admin": a command-line client of the
// Synapse-compatible admin API (package adminapi) of a running server.

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

const adminUsage = `Usage: agentspace admin [--server URL] [--token TOKEN] [--json] <command> [arguments] [flags]

Talks to a running server over its admin API (/_synapse/admin, as Synapse's).
The token is an admin's access token: --token or AGENTSPACE_ADMIN_TOKEN.
The server is --server, AGENTSPACE_SERVER or http://localhost:8008.
--json prints the server's JSON instead of tables. Flags may follow the command.

Users (USER is a user id or a localpart on the server):
  users list [--name S] [--deactivated] [--no-guests] [--admins|--non-admins]
             [--order-by FIELD] [--backwards] [--limit N --from N]
  users create USER [--password P] [--displayname NAME] [--admin] [--type bot|support]
  users deactivate USER [--erase]
  users reset-password USER --password P [--keep-devices]
  users make-admin USER [--revoke]

Rooms (ROOM is a room id or a #alias:server):
  rooms list [--search S] [--order-by FIELD] [--backwards] [--limit N --from N]
  rooms show ROOM
  rooms delete ROOM [--block] [--no-purge] [--force-purge] [--new-room-user USER]
             [--room-name NAME] [--message TEXT] [--no-wait]
  rooms block ROOM [--unblock]
  rooms join ROOM USER           put a local user (an agent) into a room

Registration tokens:
  tokens create [--value T | --length N] [--uses N] [--expires 24h|2030-01-02T15:04:05Z|UNIX_MS]
  tokens list [--valid | --invalid]
  tokens revoke TOKEN

First admin:
  bootstrap --user NAME [--password P] [--shared-secret S]
             registers an admin with the server's registration shared secret
             (--shared-secret or REGISTRATION_SHARED_SECRET) and prints its token
`

// adminCLI is one run of "agentspace admin".
type adminCLI struct {
	server string
	token  string
	json   bool
	stdout io.Writer
	http   *http.Client
	// serverName is learnt from the token's user id (whoami) when needed.
	serverName string
}

// globalFlags registers the options every admin command accepts.
func (c *adminCLI) globalFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", c.server, "server base URL")
	fs.StringVar(&c.token, "token", c.token, "admin access token")
	fs.BoolVar(&c.json, "json", c.json, "print JSON")
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// adminCmd runs "agentspace admin ...".
func adminCmd(args []string, stdout, stderr io.Writer) error {
	c := &adminCLI{
		server: envOr("AGENTSPACE_SERVER", "http://localhost:8008"),
		token:  os.Getenv("AGENTSPACE_ADMIN_TOKEN"),
		stdout: stdout,
		http:   &http.Client{Timeout: 60 * time.Second},
	}
	fs := flag.NewFlagSet("admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, adminUsage) }
	c.globalFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return errors.New("admin: missing command")
	}
	group, rest := rest[0], rest[1:]
	if group == "bootstrap" {
		return c.bootstrap(rest, stderr)
	}
	if group == "help" {
		fmt.Fprint(stdout, adminUsage)
		return nil
	}
	if len(rest) == 0 {
		fs.Usage()
		return fmt.Errorf("admin %s: missing subcommand", group)
	}
	cmd, rest := rest[0], rest[1:]
	type command func(c *adminCLI, fs *flag.FlagSet, args []string) error
	commands := map[string]map[string]command{
		"users":  {"list": (*adminCLI).usersList, "create": (*adminCLI).usersCreate, "deactivate": (*adminCLI).usersDeactivate, "reset-password": (*adminCLI).usersResetPassword, "make-admin": (*adminCLI).usersMakeAdmin},
		"rooms":  {"list": (*adminCLI).roomsList, "show": (*adminCLI).roomsShow, "delete": (*adminCLI).roomsDelete, "block": (*adminCLI).roomsBlock, "join": (*adminCLI).roomsJoin},
		"tokens": {"create": (*adminCLI).tokensCreate, "list": (*adminCLI).tokensList, "revoke": (*adminCLI).tokensRevoke},
	}
	sub, ok := commands[group]
	if !ok {
		fs.Usage()
		return fmt.Errorf("admin: unknown command %q", group)
	}
	run, ok := sub[cmd]
	if !ok {
		fs.Usage()
		return fmt.Errorf("admin %s: unknown subcommand %q", group, cmd)
	}
	sfs := flag.NewFlagSet("admin "+group+" "+cmd, flag.ContinueOnError)
	sfs.SetOutput(stderr)
	c.globalFlags(sfs)
	return run(c, sfs, rest)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// apiError is a Matrix error answered by the server.
type apiError struct {
	Status  int
	ErrCode string `json:"errcode"`
	Message string `json:"error"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s: %s (HTTP %d)", e.ErrCode, e.Message, e.Status)
}

// call sends a request with the admin token and decodes the JSON answer
// into out (when not nil). Non-2xx answers become *apiError.
func (c *adminCLI) call(method, path string, body, out any) error {
	return c.callWith(c.token, method, path, body, out)
}

func (c *adminCLI) callWith(token, method, path string, body, out any) error {
	var rdr io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rdr = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, strings.TrimRight(c.server, "/")+path, rdr)
	if err != nil {
		return fmt.Errorf("bad --server %q: %w", c.server, err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the server: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		e := &apiError{Status: resp.StatusCode}
		if json.Unmarshal(raw, e) != nil || e.ErrCode == "" {
			e.ErrCode, e.Message = "M_UNKNOWN", strings.TrimSpace(string(raw))
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("the server answered something that is not the expected JSON: %w", err)
		}
	}
	return nil
}

// needToken refuses to go on without an admin token.
func (c *adminCLI) needToken() error {
	if c.token == "" {
		return errors.New("no admin token: pass --token or set AGENTSPACE_ADMIN_TOKEN (\"agentspace admin bootstrap\" creates the first admin)")
	}
	return nil
}

// printJSON prints v indented.
func (c *adminCLI) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.stdout, string(b))
	return err
}

// table prints rows under a header, aligned.
func (c *adminCLI) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// userID turns a localpart into a user id on the server (asking whoami
// for the server name once).
func (c *adminCLI) userID(s string) (string, error) {
	if strings.HasPrefix(s, "@") {
		return s, nil
	}
	if c.serverName == "" {
		var who struct {
			UserID string `json:"user_id"`
		}
		if err := c.call("GET", "/_matrix/client/v3/account/whoami", nil, &who); err != nil {
			return "", err
		}
		_, c.serverName, _ = strings.Cut(who.UserID, ":")
	}
	return "@" + s + ":" + c.serverName, nil
}

// roomID resolves a #alias to its room id (room ids pass through).
func (c *adminCLI) roomID(s string) (string, error) {
	if !strings.HasPrefix(s, "#") {
		return s, nil
	}
	var out struct {
		RoomID string `json:"room_id"`
	}
	if err := c.call("GET", "/_matrix/client/v3/directory/room/"+url.PathEscape(s), nil, &out); err != nil {
		return "", err
	}
	return out.RoomID, nil
}

func str(v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		return x
	case bool:
		if x {
			return "yes"
		}
		return "no"
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

// msTime renders a millisecond timestamp.
func msTime(v any) string {
	ms, ok := v.(float64)
	if !ok || ms <= 0 {
		return "-"
	}
	return time.UnixMilli(int64(ms)).UTC().Format("2006-01-02 15:04")
}

// expectArgs checks the number of positional arguments.
func expectArgs(fs *flag.FlagSet, pos []string, names ...string) error {
	if len(pos) != len(names) {
		return fmt.Errorf("%s: expected %s, got %d argument(s)", fs.Name(), strings.Join(names, " "), len(pos))
	}
	return nil
}

// users list
func (c *adminCLI) usersList(fs *flag.FlagSet, args []string) error {
	name := fs.String("name", "", "only users whose id or display name contains this")
	deactivated := fs.Bool("deactivated", false, "include deactivated users")
	noGuests := fs.Bool("no-guests", false, "leave out guests")
	admins := fs.Bool("admins", false, "only admins")
	nonAdmins := fs.Bool("non-admins", false, "only non-admins")
	orderBy := fs.String("order-by", "", "name, displayname, creation_ts, last_seen_ts, admin, user_type, …")
	backwards := fs.Bool("backwards", false, "reverse the order")
	limit := fs.Int("limit", 0, "one page of this many users (default: all)")
	from := fs.Int("from", 0, "page offset (with --limit)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	q := url.Values{}
	if *name != "" {
		q.Set("name", *name)
	}
	if *deactivated {
		q.Set("deactivated", "true")
	}
	if *noGuests {
		q.Set("guests", "false")
	}
	if *admins {
		q.Set("admins", "true")
	} else if *nonAdmins {
		q.Set("admins", "false")
	}
	if *orderBy != "" {
		q.Set("order_by", *orderBy)
	}
	if *backwards {
		q.Set("dir", "b")
	}
	var users []map[string]any
	var total float64
	err = c.pages(*limit, *from, func(lim, off int) (string, bool, error) {
		q.Set("limit", strconv.Itoa(lim))
		q.Set("from", strconv.Itoa(off))
		var page struct {
			Users     []map[string]any `json:"users"`
			Total     float64          `json:"total"`
			NextToken string           `json:"next_token"`
		}
		if err := c.call("GET", "/_synapse/admin/v2/users?"+q.Encode(), nil, &page); err != nil {
			return "", false, err
		}
		users, total = append(users, page.Users...), page.Total
		return page.NextToken, page.NextToken != "", nil
	})
	if err != nil {
		return err
	}
	if users == nil {
		users = []map[string]any{}
	}
	if c.json {
		return c.printJSON(map[string]any{"users": users, "total": total})
	}
	rows := make([][]string, 0, len(users))
	for _, u := range users {
		rows = append(rows, []string{str(u["name"]), str(u["displayname"]), str(u["admin"]), str(u["deactivated"]),
			str(u["user_type"]), str(u["is_guest"]), msTime(u["creation_ts"])})
	}
	if err := c.table([]string{"USER", "DISPLAY NAME", "ADMIN", "DEACTIVATED", "TYPE", "GUEST", "CREATED"}, rows); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%d of %s users\n", len(users), str(total))
	return nil
}

// pages fetches one page (limit > 0) or every page (pages of 100). next
// returns the next offset as text and whether there is one.
func (c *adminCLI) pages(limit, from int, next func(limit, from int) (string, bool, error)) error {
	one := limit > 0
	if !one {
		limit = 100
	}
	for range 100_000 {
		tok, more, err := next(limit, from)
		if err != nil {
			return err
		}
		if one || !more {
			return nil
		}
		n, err := strconv.Atoi(tok)
		if err != nil || n <= from {
			return fmt.Errorf("the server's pagination token %q does not move on", tok)
		}
		from = n
	}
	return errors.New("too many pages")
}

// users create
func (c *adminCLI) usersCreate(fs *flag.FlagSet, args []string) error {
	password := fs.String("password", "", "password (none: the user cannot log in with one)")
	displayName := fs.String("displayname", "", "display name (default: the localpart)")
	admin := fs.Bool("admin", false, "make the user a server admin")
	userType := fs.String("type", "", "user type: bot or support")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "USER"); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	uid, err := c.userID(pos[0])
	if err != nil {
		return err
	}
	var existing map[string]any
	if err := c.call("GET", "/_synapse/admin/v2/users/"+url.PathEscape(uid), nil, &existing); err == nil {
		return fmt.Errorf("user %s already exists", uid)
	} else if e, ok := err.(*apiError); !ok || e.Status != http.StatusNotFound {
		return err
	}
	body := map[string]any{"admin": *admin}
	if *password != "" {
		body["password"] = *password
	}
	if *displayName != "" {
		body["displayname"] = *displayName
	}
	if *userType != "" {
		body["user_type"] = *userType
	}
	var out map[string]any
	if err := c.call("PUT", "/_synapse/admin/v2/users/"+url.PathEscape(uid), body, &out); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(out)
	}
	fmt.Fprintf(c.stdout, "created %s (display name %s, admin %s, type %s)\n", str(out["name"]), str(out["displayname"]), str(out["admin"]), str(out["user_type"]))
	return nil
}

// users deactivate
func (c *adminCLI) usersDeactivate(fs *flag.FlagSet, args []string) error {
	erase := fs.Bool("erase", false, "also erase the profile (GDPR erasure)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "USER"); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	uid, err := c.userID(pos[0])
	if err != nil {
		return err
	}
	var out map[string]any
	if err := c.call("POST", "/_synapse/admin/v1/deactivate/"+url.PathEscape(uid), map[string]any{"erase": *erase}, &out); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(out)
	}
	fmt.Fprintf(c.stdout, "deactivated %s\n", uid)
	return nil
}

// users reset-password
func (c *adminCLI) usersResetPassword(fs *flag.FlagSet, args []string) error {
	password := fs.String("password", "", "the new password (required)")
	keep := fs.Bool("keep-devices", false, "do not log the user out")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "USER"); err != nil {
		return err
	}
	if *password == "" {
		return errors.New("users reset-password: --password is required")
	}
	if err := c.needToken(); err != nil {
		return err
	}
	uid, err := c.userID(pos[0])
	if err != nil {
		return err
	}
	out := map[string]any{}
	if err := c.call("POST", "/_synapse/admin/v1/reset_password/"+url.PathEscape(uid),
		map[string]any{"new_password": *password, "logout_devices": !*keep}, &out); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(out)
	}
	fmt.Fprintf(c.stdout, "password of %s changed\n", uid)
	return nil
}

// users make-admin
func (c *adminCLI) usersMakeAdmin(fs *flag.FlagSet, args []string) error {
	revoke := fs.Bool("revoke", false, "take admin rights away instead")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "USER"); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	uid, err := c.userID(pos[0])
	if err != nil {
		return err
	}
	if err := c.call("PUT", "/_synapse/admin/v1/users/"+url.PathEscape(uid)+"/admin", map[string]any{"admin": !*revoke}, nil); err != nil {
		return err
	}
	var out map[string]any
	if err := c.call("GET", "/_synapse/admin/v1/users/"+url.PathEscape(uid)+"/admin", nil, &out); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(map[string]any{"user_id": uid, "admin": out["admin"]})
	}
	fmt.Fprintf(c.stdout, "%s admin: %s\n", uid, str(out["admin"]))
	return nil
}

// rooms list
func (c *adminCLI) roomsList(fs *flag.FlagSet, args []string) error {
	search := fs.String("search", "", "only rooms whose name, alias or id contains this")
	orderBy := fs.String("order-by", "", "name, joined_members, state_events, creator, version, …")
	backwards := fs.Bool("backwards", false, "reverse the order")
	limit := fs.Int("limit", 0, "one page of this many rooms (default: all)")
	from := fs.Int("from", 0, "page offset (with --limit)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	q := url.Values{}
	if *search != "" {
		q.Set("search_term", *search)
	}
	if *orderBy != "" {
		q.Set("order_by", *orderBy)
	}
	if *backwards {
		q.Set("dir", "b")
	}
	var rooms []map[string]any
	var total float64
	err = c.pages(*limit, *from, func(lim, off int) (string, bool, error) {
		q.Set("limit", strconv.Itoa(lim))
		q.Set("from", strconv.Itoa(off))
		var page struct {
			Rooms     []map[string]any `json:"rooms"`
			Total     float64          `json:"total_rooms"`
			NextBatch *float64         `json:"next_batch"`
		}
		if err := c.call("GET", "/_synapse/admin/v1/rooms?"+q.Encode(), nil, &page); err != nil {
			return "", false, err
		}
		rooms, total = append(rooms, page.Rooms...), page.Total
		if page.NextBatch == nil {
			return "", false, nil
		}
		return strconv.Itoa(int(*page.NextBatch)), true, nil
	})
	if err != nil {
		return err
	}
	if rooms == nil {
		rooms = []map[string]any{}
	}
	if c.json {
		return c.printJSON(map[string]any{"rooms": rooms, "total_rooms": total})
	}
	rows := make([][]string, 0, len(rooms))
	for _, r := range rooms {
		rows = append(rows, []string{str(r["room_id"]), str(r["name"]), str(r["canonical_alias"]), str(r["joined_members"]),
			str(r["join_rules"]), str(r["public"]), str(r["creator"])})
	}
	if err := c.table([]string{"ROOM", "NAME", "ALIAS", "MEMBERS", "JOIN RULE", "PUBLIC", "CREATOR"}, rows); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%d of %s rooms\n", len(rooms), str(total))
	return nil
}

// rooms show
func (c *adminCLI) roomsShow(fs *flag.FlagSet, args []string) error {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "ROOM"); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	rid, err := c.roomID(pos[0])
	if err != nil {
		return err
	}
	var room map[string]any
	if err := c.call("GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(rid), nil, &room); err != nil {
		return err
	}
	var members struct {
		Members []string `json:"members"`
	}
	if err := c.call("GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(rid)+"/members", nil, &members); err != nil {
		return err
	}
	var block map[string]any
	if err := c.call("GET", "/_synapse/admin/v1/rooms/"+url.PathEscape(rid)+"/block", nil, &block); err != nil {
		return err
	}
	if c.json {
		room["members"] = members.Members
		room["blocked"] = block["block"]
		return c.printJSON(room)
	}
	rows := [][]string{}
	for _, k := range []string{"room_id", "name", "topic", "canonical_alias", "version", "creator", "joined_members",
		"joined_local_devices", "state_events", "join_rules", "guest_access", "history_visibility", "encryption", "public", "room_type", "forgotten"} {
		rows = append(rows, []string{k, str(room[k])})
	}
	rows = append(rows, []string{"blocked", str(block["block"])}, []string{"members", strings.Join(members.Members, ", ")})
	return c.table([]string{"FIELD", "VALUE"}, rows)
}

// rooms delete
func (c *adminCLI) roomsDelete(fs *flag.FlagSet, args []string) error {
	block := fs.Bool("block", false, "block the room id: nobody may join it again")
	noPurge := fs.Bool("no-purge", false, "keep the room's history in the database")
	forcePurge := fs.Bool("force-purge", false, "purge even if users could not be removed")
	newRoomUser := fs.String("new-room-user", "", "create a new room as this user and move the members there")
	roomName := fs.String("room-name", "", "name of the new room")
	message := fs.String("message", "", "first message in the new room")
	noWait := fs.Bool("no-wait", false, "print the delete id and return without waiting")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait for the deletion")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "ROOM"); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	rid, err := c.roomID(pos[0])
	if err != nil {
		return err
	}
	body := map[string]any{"block": *block, "purge": !*noPurge, "force_purge": *forcePurge}
	if *newRoomUser != "" {
		uid, err := c.userID(*newRoomUser)
		if err != nil {
			return err
		}
		body["new_room_user_id"] = uid
	}
	if *roomName != "" {
		body["room_name"] = *roomName
	}
	if *message != "" {
		body["message"] = *message
	}
	var started struct {
		DeleteID string `json:"delete_id"`
	}
	if err := c.call("DELETE", "/_synapse/admin/v2/rooms/"+url.PathEscape(rid), body, &started); err != nil {
		return err
	}
	if *noWait {
		if c.json {
			return c.printJSON(started)
		}
		fmt.Fprintf(c.stdout, "deletion of %s started: delete id %s\n", rid, started.DeleteID)
		return nil
	}
	deadline := time.Now().Add(*timeout)
	for {
		var st map[string]any
		if err := c.call("GET", "/_synapse/admin/v2/rooms/delete_status/"+url.PathEscape(started.DeleteID), nil, &st); err != nil {
			return err
		}
		switch st["status"] {
		case "complete", "failed":
			if c.json {
				if err := c.printJSON(st); err != nil {
					return err
				}
			} else {
				res, _ := st["shutdown_room"].(map[string]any)
				rows := [][]string{{"room_id", rid}, {"delete_id", started.DeleteID}, {"status", str(st["status"])}}
				if res != nil {
					rows = append(rows, []string{"kicked_users", joinAny(res["kicked_users"])},
						[]string{"failed_to_kick_users", joinAny(res["failed_to_kick_users"])},
						[]string{"local_aliases", joinAny(res["local_aliases"])}, []string{"new_room_id", str(res["new_room_id"])})
				}
				if err := c.table([]string{"FIELD", "VALUE"}, rows); err != nil {
					return err
				}
			}
			if st["status"] == "failed" {
				return fmt.Errorf("deletion of %s failed: %s", rid, str(st["error"]))
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("deletion of %s still %s after %s (delete id %s)", rid, str(st["status"]), *timeout, started.DeleteID)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func joinAny(v any) string {
	arr, _ := v.([]any)
	parts := make([]string, 0, len(arr))
	for _, x := range arr {
		parts = append(parts, str(x))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// rooms block
func (c *adminCLI) roomsBlock(fs *flag.FlagSet, args []string) error {
	unblock := fs.Bool("unblock", false, "lift the block instead")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "ROOM"); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	rid, err := c.roomID(pos[0])
	if err != nil {
		return err
	}
	var out map[string]any
	if err := c.call("PUT", "/_synapse/admin/v1/rooms/"+url.PathEscape(rid)+"/block", map[string]any{"block": !*unblock}, &out); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(out)
	}
	fmt.Fprintf(c.stdout, "%s blocked: %s\n", rid, str(out["block"]))
	return nil
}

// rooms join
func (c *adminCLI) roomsJoin(fs *flag.FlagSet, args []string) error {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "ROOM", "USER"); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	uid, err := c.userID(pos[1])
	if err != nil {
		return err
	}
	var out map[string]any
	if err := c.call("POST", "/_synapse/admin/v1/join/"+url.PathEscape(pos[0]), map[string]any{"user_id": uid}, &out); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(out)
	}
	fmt.Fprintf(c.stdout, "%s joined %s\n", uid, str(out["room_id"]))
	return nil
}

// parseExpiry reads --expires: a duration from now, an RFC 3339 time or Unix milliseconds.
func parseExpiry(s string) (int64, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(d).UnixMilli(), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UnixMilli(), nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return ms, nil
	}
	return 0, fmt.Errorf("--expires %q: want a duration (24h), an RFC 3339 time or Unix milliseconds", s)
}

// tokens create
func (c *adminCLI) tokensCreate(fs *flag.FlagSet, args []string) error {
	token := fs.String("value", "", "the registration token itself (default: generated)")
	length := fs.Int("length", 0, "length of a generated token (default 16)")
	uses := fs.Int("uses", -1, "how many registrations may use it (default: unlimited)")
	expires := fs.String("expires", "", "when it stops working: 24h, 2030-01-02T15:04:05Z or Unix ms")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	body := map[string]any{}
	if *token != "" {
		body["token"] = *token
	}
	if *length > 0 {
		body["length"] = *length
	}
	if *uses >= 0 {
		body["uses_allowed"] = *uses
	}
	if *expires != "" {
		ms, err := parseExpiry(*expires)
		if err != nil {
			return err
		}
		body["expiry_time"] = ms
	}
	var out map[string]any
	if err := c.call("POST", "/_synapse/admin/v1/registration_tokens/new", body, &out); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(out)
	}
	return c.tokenTable([]map[string]any{out})
}

func (c *adminCLI) tokenTable(tokens []map[string]any) error {
	rows := make([][]string, 0, len(tokens))
	for _, t := range tokens {
		uses := "unlimited"
		if t["uses_allowed"] != nil {
			uses = str(t["uses_allowed"])
		}
		rows = append(rows, []string{str(t["token"]), uses, str(t["pending"]), str(t["completed"]), msTime(t["expiry_time"])})
	}
	return c.table([]string{"TOKEN", "USES ALLOWED", "PENDING", "COMPLETED", "EXPIRES"}, rows)
}

// tokens list
func (c *adminCLI) tokensList(fs *flag.FlagSet, args []string) error {
	valid := fs.Bool("valid", false, "only tokens that still work")
	invalid := fs.Bool("invalid", false, "only expired or used-up tokens")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	path := "/_synapse/admin/v1/registration_tokens"
	if *valid {
		path += "?valid=true"
	} else if *invalid {
		path += "?valid=false"
	}
	var out struct {
		Tokens []map[string]any `json:"registration_tokens"`
	}
	if err := c.call("GET", path, nil, &out); err != nil {
		return err
	}
	if out.Tokens == nil {
		out.Tokens = []map[string]any{}
	}
	if c.json {
		return c.printJSON(map[string]any{"registration_tokens": out.Tokens})
	}
	return c.tokenTable(out.Tokens)
}

// tokens revoke
func (c *adminCLI) tokensRevoke(fs *flag.FlagSet, args []string) error {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := expectArgs(fs, pos, "TOKEN"); err != nil {
		return err
	}
	if err := c.needToken(); err != nil {
		return err
	}
	if err := c.call("DELETE", "/_synapse/admin/v1/registration_tokens/"+url.PathEscape(pos[0]), nil, nil); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(map[string]any{"token": pos[0], "revoked": true})
	}
	fmt.Fprintf(c.stdout, "registration token %s revoked\n", pos[0])
	return nil
}

// bootstrap registers an admin through shared-secret registration
// (GET then POST /_synapse/admin/v1/register, Synapse's format) and prints
// its access token.
func (c *adminCLI) bootstrap(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("admin bootstrap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.globalFlags(fs)
	user := fs.String("user", "", "localpart of the admin to create (required)")
	password := fs.String("password", "", "their password (default: generated and printed)")
	secret := fs.String("shared-secret", os.Getenv("REGISTRATION_SHARED_SECRET"), "the server's registration shared secret")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if *user == "" && len(pos) == 1 {
		*user, pos = pos[0], nil
	}
	if err := expectArgs(fs, pos); err != nil {
		return err
	}
	if *user == "" {
		return errors.New("admin bootstrap: --user is required")
	}
	if *secret == "" {
		return errors.New("admin bootstrap: no shared secret: pass --shared-secret or set REGISTRATION_SHARED_SECRET (the server's registration.shared_secret)")
	}
	generated := *password == ""
	if generated {
		b := make([]byte, 18)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		*password = base64.RawURLEncoding.EncodeToString(b)
	}
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if err := c.callWith("", "GET", "/_synapse/admin/v1/register", nil, &nonce); err != nil {
		return err
	}
	mac := hmac.New(sha1.New, []byte(*secret))
	for i, part := range []string{nonce.Nonce, *user, *password, "admin"} {
		if i > 0 {
			mac.Write([]byte{0})
		}
		mac.Write([]byte(part))
	}
	var out map[string]any
	if err := c.callWith("", "POST", "/_synapse/admin/v1/register", map[string]any{
		"nonce": nonce.Nonce, "username": *user, "password": *password, "admin": true, "mac": hex.EncodeToString(mac.Sum(nil)),
	}, &out); err != nil {
		return err
	}
	if c.json {
		if generated {
			out["password"] = *password
		}
		return c.printJSON(out)
	}
	fmt.Fprintf(c.stdout, "created admin %s\n", str(out["user_id"]))
	if generated {
		fmt.Fprintf(c.stdout, "password: %s\n", *password)
	}
	fmt.Fprintf(c.stdout, "access token: %s\n\nexport AGENTSPACE_ADMIN_TOKEN=%s\n", str(out["access_token"]), str(out["access_token"]))
	return nil
}
