package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"gopkg.in/yaml.v3"
	mautrixas "maunium.net/go/mautrix/appservice"

	"github.com/agentspace/agentspace/appservice"
	"github.com/agentspace/agentspace/storage"
)

// appserviceCmd dispatches "agentspace appservice <subcommand>".
func appserviceCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "new" {
		fmt.Fprint(stderr, `Usage: agentspace appservice new --id ID --url URL --users REGEX [flags]

Writes an application service registration with fresh random tokens.
Run "agentspace appservice new -h" for the flags.
`)
		return errors.New("expected a subcommand: new")
	}
	return appserviceNew(args[1:], stdout, stderr)
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return fmt.Sprint(*m) }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func appserviceNew(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("appservice new", flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.String("id", "", "unique id of the appservice (required)")
	url := fs.String("url", "", `URL where the appservice receives transactions, e.g. http://127.0.0.1:29333 (required; "null" for none)`)
	sender := fs.String("sender", "", "sender_localpart, the appservice's own bot user (default: the id)")
	var users, aliases, roomIDs multiFlag
	fs.Var(&users, "users", "exclusive user id regex, e.g. '@agent_.*:localhost' (repeatable)")
	fs.Var(&aliases, "aliases", "exclusive room alias regex (repeatable)")
	fs.Var(&roomIDs, "rooms", "room id regex (repeatable, not exclusive)")
	rateLimited := fs.Bool("rate-limited", false, "subject the appservice to rate limits")
	ephemeral := fs.Bool("ephemeral", false, "push typing, receipts, presence and to-device messages (MSC2409)")
	out := fs.String("out", "", "write the registration to this file (mode 0600) instead of stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *id == "" || *url == "" {
		fs.Usage()
		return errors.New("--id and --url are required")
	}
	reg := mautrixas.Registration{
		ID: *id, URL: *url, SenderLocalpart: *sender,
		AppToken: storage.NewToken("as_"), ServerToken: storage.NewToken("hs_"),
		RateLimited: rateLimited, EphemeralEvents: *ephemeral, SoruEphemeralEvents: *ephemeral,
	}
	if reg.URL == "null" {
		reg.URL = ""
	}
	if reg.SenderLocalpart == "" {
		reg.SenderLocalpart = *id
	}
	for _, u := range users {
		reg.Namespaces.UserIDs = append(reg.Namespaces.UserIDs, mautrixas.Namespace{Regex: u, Exclusive: true})
	}
	for _, a := range aliases {
		reg.Namespaces.RoomAliases = append(reg.Namespaces.RoomAliases, mautrixas.Namespace{Regex: a, Exclusive: true})
	}
	for _, r := range roomIDs {
		reg.Namespaces.RoomIDs = append(reg.Namespaces.RoomIDs, mautrixas.Namespace{Regex: r, Exclusive: false})
	}
	data, err := yaml.Marshal(&reg)
	if err != nil {
		return fmt.Errorf("encoding registration: %w", err)
	}
	// Check it the way the server will, so a bad regex fails here.
	if _, err := appservice.Parse(orStdout(*out), data); err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(data)
		return err
	}
	if err := os.WriteFile(*out, data, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	fmt.Fprintf(stderr, "wrote %s; add it to app_service_config_files (or APPSERVICE_REGISTRATIONS) and restart agentspace\n", *out)
	return nil
}

func orStdout(path string) string {
	if path == "" {
		return "<stdout>"
	}
	return path
}
