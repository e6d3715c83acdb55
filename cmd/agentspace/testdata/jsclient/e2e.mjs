// End-to-end test of AgentSpace with an unmodified matrix-js-sdk, the client
// library the OpenClaw gateway's Matrix channel is built on.
//
// Usage: node e2e.mjs <phase> <stateFile>   (HS_URL in the environment)
//   phase "chat":    register two users, log in, create a room, join, chat both
//                    ways over long-poll sync, typing + receipts, 500 messages
//                    paginated back in order; writes what it made to stateFile.
//   phase "restart": after the server restarted on the same data, log in again
//                    and check every room and message is still there.
// Exits non-zero with a message on the first failed check.
import * as sdk from "matrix-js-sdk";
import { readFileSync, writeFileSync } from "node:fs";

const baseUrl = process.env.HS_URL;
const [phase, stateFile] = process.argv.slice(2);
const PASSWORD = "correct horse battery staple";
const TIMEOUT_MS = 30000;

function fail(msg) {
    console.error("FAIL:", msg);
    process.exit(1);
}
function check(cond, msg) {
    if (!cond) fail(msg);
}
// Silence the SDK's own logging; our checks print what matters.
try { sdk.logger?.setLevel?.("warn"); } catch { /* older/newer logger API */ }

function withTimeout(promise, what, ms = TIMEOUT_MS) {
    let timer;
    return Promise.race([
        promise.finally(() => clearTimeout(timer)),
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms); }),
    ]);
}

async function register(username) {
    const client = sdk.createClient({ baseUrl });
    // First call without auth: the server must answer 401 with UIA flows.
    let session;
    try {
        await client.registerRequest({ username, password: PASSWORD });
        fail("register without auth should need user-interactive auth");
    } catch (e) {
        check(e.httpStatus === 401, `register: expected 401, got ${e.httpStatus} ${e.message}`);
        check(e.data?.flows?.some((f) => f.stages.includes("m.login.dummy")), "register: m.login.dummy flow offered");
        session = e.data.session;
    }
    const res = await client.registerRequest({ username, password: PASSWORD, auth: { type: "m.login.dummy", session } });
    check(res.user_id === `@${username}:localhost`, `register: user_id ${res.user_id}`);
    check(typeof res.access_token === "string" && res.access_token.length > 20, "register: access token");
    return res;
}

async function login(username) {
    const client = sdk.createClient({ baseUrl });
    const res = await client.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password: PASSWORD,
        initial_device_display_name: `e2e ${username}`,
    });
    check(res.user_id === `@${username}:localhost`, `login: user_id ${res.user_id}`);
    return sdk.createClient({ baseUrl, accessToken: res.access_token, userId: res.user_id, deviceId: res.device_id });
}

async function startSyncing(client) {
    const ready = new Promise((resolve, reject) => {
        client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
            if (state === "PREPARED" || state === "SYNCING") resolve();
            if (state === "ERROR") reject(data?.error ?? new Error("sync error"));
        });
    });
    await client.startClient({ initialSyncLimit: 20, lazyLoadMembers: true });
    await withTimeout(ready, "initial sync");
}

// waitForEvent resolves when pred(event) holds for a timeline event in roomId.
function waitForTimeline(client, roomId, pred, what) {
    return withTimeout(new Promise((resolve) => {
        const room = client.getRoom(roomId);
        const existing = room?.getLiveTimeline().getEvents().find(pred);
        if (existing) return resolve(existing);
        const onEvent = (ev, r) => {
            if (r?.roomId === roomId && pred(ev)) {
                client.off(sdk.RoomEvent.Timeline, onEvent);
                resolve(ev);
            }
        };
        client.on(sdk.RoomEvent.Timeline, onEvent);
    }), what);
}

async function pageAll(client, roomId) {
    // Page backwards through the whole room with the SDK's /messages request.
    const bodies = [];
    let from = null;
    for (let i = 0; i < 1000; i++) {
        const res = await client.createMessagesRequest(roomId, from, 50, sdk.Direction.Backward);
        for (const ev of res.chunk) {
            if (ev.type === "m.room.message") bodies.push(ev.content.body);
        }
        if (!res.end || res.chunk.length === 0) break;
        from = res.end;
    }
    return bodies.reverse();
}

async function chatPhase() {
    await register("alice");
    await register("bob");
    const alice = await login("alice");
    const bob = await login("bob");
    await startSyncing(alice);
    await startSyncing(bob);

    const { room_id: roomId } = await alice.createRoom({ name: "agents", preset: "public_chat", room_alias_name: "agents" });
    check(roomId.startsWith("!"), `createRoom: ${roomId}`);
    // matrix-js-sdk may fire the same join more than once; the server must be idempotent.
    const joined = await Promise.all([bob.joinRoom("#agents:localhost"), bob.joinRoom(roomId)]);
    check(joined.every((r) => r.roomId === roomId), "join by alias and id reach the same room");
    await waitForTimeline(alice, roomId, (ev) => ev.getType() === "m.room.member" && ev.getStateKey() === bob.getUserId() && ev.getContent().membership === "join", "alice sees bob join");

    // Messages both ways through long-poll sync.
    const { event_id: helloId } = await alice.sendTextMessage(roomId, "hello from alice");
    const seenByBob = await waitForTimeline(bob, roomId, (ev) => ev.getId() === helloId, "bob receives alice's message");
    check(seenByBob.getContent().body === "hello from alice", "bob sees the right body");
    const { event_id: replyId } = await bob.sendTextMessage(roomId, "hello from bob");
    await waitForTimeline(alice, roomId, (ev) => ev.getId() === replyId, "alice receives bob's reply");

    // Typing notifications arrive.
    const typing = withTimeout(new Promise((resolve) => {
        bob.on(sdk.RoomMemberEvent.Typing, (_ev, member) => {
            if (member.userId === alice.getUserId() && member.typing) resolve();
        });
    }), "bob sees alice typing");
    await alice.sendTyping(roomId, true, 10000);
    await typing;

    // Read receipts arrive.
    const receipt = withTimeout(new Promise((resolve) => {
        alice.on(sdk.RoomEvent.Receipt, (ev, room) => {
            if (room.roomId !== roomId) return;
            const content = ev.getContent();
            if (content[helloId]?.["m.read"]?.[bob.getUserId()]) resolve();
        });
    }), "alice sees bob's read receipt");
    await bob.sendReadReceipt(seenByBob);
    await receipt;

    // 500 messages, then page back through all of them in order.
    const N = 500;
    for (let i = 0; i < N; i += 25) {
        await Promise.all(Array.from({ length: 25 }, (_, j) => alice.sendTextMessage(roomId, `msg ${String(i + j).padStart(4, "0")}`)));
    }
    const bodies = (await pageAll(bob, roomId)).filter((b) => b.startsWith("msg "));
    check(bodies.length === N, `pagination returned ${bodies.length} of ${N} messages`);
    const sorted = [...bodies].sort();
    check(new Set(bodies).size === N, "pagination returned duplicates");
    // Sends were concurrent in batches of 25, so order within a batch is the
    // server's; across batches it must follow the send order.
    for (let i = 0; i < N; i += 25) {
        const batch = bodies.slice(i, i + 25).sort();
        check(JSON.stringify(batch) === JSON.stringify(sorted.slice(i, i + 25)), `batch ${i / 25} out of order`);
    }
    const last = await waitForTimeline(bob, roomId, (ev) => ev.getContent().body === "msg 0499" || ev.getContent().body === bodies[N - 1], "bob's live timeline reaches the last message");
    check(!!last, "live timeline");

    alice.stopClient();
    bob.stopClient();
    writeFileSync(stateFile, JSON.stringify({ roomId, helloId, replyId, count: N }));
    console.log(`chat phase OK: room ${roomId}, ${N} messages paginated in order`);
}

async function restartPhase() {
    const state = JSON.parse(readFileSync(stateFile, "utf8"));
    const bob = await login("bob");
    await startSyncing(bob);
    const room = bob.getRoom(state.roomId);
    check(room, "room survives the restart");
    check(room.getMyMembership() === "join", "bob is still joined");
    const ev = await bob.fetchRoomEvent(state.roomId, state.helloId);
    check(ev.content.body === "hello from alice", "first message survives the restart");
    const bodies = (await pageAll(bob, state.roomId)).filter((b) => b.startsWith("msg "));
    check(bodies.length === state.count, `after restart ${bodies.length} of ${state.count} messages`);
    const alias = await bob.getRoomIdForAlias("#agents:localhost");
    check(alias.room_id === state.roomId, "alias survives the restart");
    bob.stopClient();
    console.log("restart phase OK: room, alias and all messages kept");
}

try {
    if (phase === "chat") await chatPhase();
    else if (phase === "restart") await restartPhase();
    else fail(`unknown phase ${phase}`);
    process.exit(0);
} catch (e) {
    fail(e?.stack ?? String(e));
}
