package appservice

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"

	"gopkg.in/yaml.v3"
	mautrixas "maunium.net/go/mautrix/appservice"

	"github.com/agentspace/agentspace/config"
	"github.com/agentspace/agentspace/storage"
)

// The built-in agents appservice: AgentSpace's own registration for agent
// bot users (OpenClaw agents). It is generated on first start next to the
// database (like signing.key) and always loaded with the configured ones.
// It has no URL (it receives no transactions) and is not rate limited;
// "agentspace openclaw link" uses its as_token to register the agents and
// give each a token and device of its own.
const (
	// BuiltinID is the id of the built-in agents appservice.
	BuiltinID = "agentspace-agents"
	// BuiltinSenderLocalpart is its own bot user: it creates observer rooms
	// and posts the loop breaker's notices. A leading underscore cannot be
	// registered by people.
	BuiltinSenderLocalpart = "_agentspace"
	// BuiltinFileName is the registration's file name in the data directory.
	BuiltinFileName = "agents-appservice.yaml"
)

// BuiltinPath is where the built-in registration lives: next to the SQLite
// database file (the data directory), also when PostgreSQL is used.
func BuiltinPath(cfg *config.Config) string {
	return filepath.Join(filepath.Dir(cfg.Database.Path), BuiltinFileName)
}

// BuiltinUserRegex is the exclusive user namespace of the built-in
// appservice: @<prefix>.*:<server>.
func BuiltinUserRegex(prefix, serverName string) string {
	return "@" + regexp.QuoteMeta(prefix) + ".*:" + regexp.QuoteMeta(serverName)
}

// LoadOrCreateBuiltin reads the built-in registration, creating it (mode
// 0600, fresh random tokens) when it does not exist yet. When the
// configured agents.user_prefix or server name changed, the namespace in
// the file is updated; the tokens are kept.
func LoadOrCreateBuiltin(cfg *config.Config) (*Registration, error) {
	path := BuiltinPath(cfg)
	want := BuiltinUserRegex(cfg.Agents.UserPrefix, cfg.ServerName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		raw := mautrixas.Registration{
			ID: BuiltinID, SenderLocalpart: BuiltinSenderLocalpart,
			AppToken: storage.NewToken("as_"), ServerToken: storage.NewToken("hs_"),
			RateLimited: new(bool),
		}
		raw.Namespaces.UserIDs = mautrixas.NamespaceList{{Regex: want, Exclusive: true}}
		if err := writeRegistration(path, &raw); err != nil {
			return nil, err
		}
		return LoadFile(path)
	} else if err != nil {
		return nil, fmt.Errorf("built-in agents appservice: %w", err)
	}
	reg, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	if reg.ID != BuiltinID {
		return nil, fmt.Errorf("appservice registration %s: id: the built-in agents appservice must keep the id %q", path, BuiltinID)
	}
	ns := reg.Namespaces.UserIDs
	if len(ns) != 1 || ns[0].Regex != want || !ns[0].Exclusive {
		raw := reg.Registration
		raw.Namespaces.UserIDs = mautrixas.NamespaceList{{Regex: want, Exclusive: true}}
		if err := writeRegistration(path, &raw); err != nil {
			return nil, err
		}
		return LoadFile(path)
	}
	return reg, nil
}

// ReadBuiltin reads an existing built-in registration (for the CLI, which
// talks to a running server and never creates one).
func ReadBuiltin(path string) (*Registration, error) {
	reg, err := LoadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist: start the server once (it creates the built-in agents appservice there) or pass the registration file", path)
	}
	return reg, err
}

// writeRegistration writes a registration atomically with mode 0600: it
// holds the as_token, which acts as any agent.
func writeRegistration(path string, raw *mautrixas.Registration) error {
	data, err := yaml.Marshal(raw)
	if err != nil {
		return fmt.Errorf("encoding the built-in agents appservice: %w", err)
	}
	if raw.URL == "" { // the standard spelling of "no URL: receives no transactions"
		data = bytes.Replace(data, []byte("url: \"\"\n"), []byte("url: null\n"), 1)
	}
	header := []byte("# AgentSpace's built-in agents appservice (generated; keep it secret: the as_token acts as every agent).\n")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("built-in agents appservice: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".agents-appservice-*.yaml")
	if err != nil {
		return fmt.Errorf("built-in agents appservice: %w", err)
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	if err := tmp.Chmod(0o600); err == nil {
		_, err = tmp.Write(append(header, data...))
		if err == nil {
			err = tmp.Sync()
		}
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// ConflictsWith reports why reg cannot be loaded together with others (an
// overlapping exclusive namespace, a shared id, token or sender), or nil.
func ConflictsWith(reg *Registration, others []*Registration) error {
	for _, o := range others {
		switch {
		case o.ID == reg.ID:
			return fmt.Errorf("%s uses the id %q", o.Path, reg.ID)
		case o.SenderLocalpart == reg.SenderLocalpart:
			return fmt.Errorf("%s uses the sender %q", o.Path, reg.SenderLocalpart)
		case o.AppToken == reg.AppToken || o.ServerToken == reg.ServerToken || o.AppToken == reg.ServerToken || o.ServerToken == reg.AppToken:
			return fmt.Errorf("%s uses the same token", o.Path)
		}
		if err := checkOverlap(reg, o); err != nil {
			return err
		}
	}
	return nil
}
