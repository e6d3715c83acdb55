// An echo bot built on matrix-bot-sdk's Appservice, unmodified, against
// AgentSpace's application-service API.
//
// Usage: node echo.mjs   (environment below)
//   REGISTRATION  path of the registration YAML (`agentspace appservice new`);
//                 the bot listens on the host and port of its `url`
//   HS_URL        homeserver base URL
//   HS_NAME       server name (default "localhost")
//   BOT_SUFFIX    the intent is the namespace user with this suffix
//                 (registration users regex "@agent_.*:localhost" + "echo")
//   HUMAN         user id whose messages the bot answers
//
// The bot registers its intent, joins the room it is invited to, answers the
// first text message from HUMAN with "echo: <body>", waits until its own
// answer comes back to it in a transaction, stops and exits 0. Progress goes
// to stdout as "E2E <step> <args>" lines the Go test waits for:
//   E2E ready <bot user id>
//   E2E joined <room id>
//   E2E answered <room id> <event id>
//   E2E delivered <event id>
// Any error, or not done within TIMEOUT_MS, exits non-zero.
import sdk from "matrix-bot-sdk";
import { readFileSync } from "node:fs";
import { parse } from "yaml";

const { Appservice, LogService, LogLevel } = sdk;
const TIMEOUT_MS = 60000;

function fail(msg) {
    console.error("FAIL:", msg);
    process.exit(1);
}
function step(...args) {
    console.log("E2E", ...args);
}
for (const name of ["REGISTRATION", "HS_URL", "BOT_SUFFIX", "HUMAN"]) {
    if (!process.env[name]) fail(`${name} is not set`);
}
// Unreferenced: once the appservice stopped, node exits by itself, after the
// last transaction's answer went out.
setTimeout(() => fail(`not done within ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();
process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack ?? JSON.stringify(e)}`));
LogService.setLevel(LogLevel.WARN);

const registration = parse(readFileSync(process.env.REGISTRATION, "utf8"));
const listen = new URL(registration.url);
const appservice = new Appservice({
    bindAddress: listen.hostname,
    port: Number(listen.port),
    homeserverName: process.env.HS_NAME || "localhost",
    homeserverUrl: process.env.HS_URL,
    registration,
});
const intent = appservice.getIntentForSuffix(process.env.BOT_SUFFIX);
const human = process.env.HUMAN;

// Report errors from the bot-sdk (MatrixError carries errcode and body).
function describe(e) {
    if (e?.errcode) return `${e.statusCode} ${e.errcode}: ${e.error ?? ""} ${JSON.stringify(e.body ?? {})}`;
    return e?.stack ?? String(e);
}
function handler(what, fn) {
    return (...args) => fn(...args).catch((e) => fail(`${what}: ${describe(e)}`));
}

appservice.on("room.invite", handler("join on invite", async (roomId, ev) => {
    if (ev.state_key !== intent.userId) return;
    if (ev.sender !== human) fail(`invite from ${ev.sender}, want ${human}`);
    const joined = await intent.joinRoom(roomId);
    if (joined !== roomId) fail(`joinRoom returned ${joined}, want ${roomId}`);
    const rooms = await intent.getJoinedRooms();
    if (!rooms.includes(roomId)) fail(`joined rooms ${JSON.stringify(rooms)} lack ${roomId}`);
    step("joined", roomId);
}));

let answered = false;
let answerId = null; // the answer's event id, once sendText returned
const fromBot = new Set(); // event ids of the bot's messages delivered to it
function doneWhenDelivered() {
    if (answerId === null || !fromBot.has(answerId)) return;
    step("delivered", answerId);
    appservice.stop();
}
appservice.on("room.message", handler("answer", async (roomId, ev) => {
    if (ev.sender === intent.userId) {
        fromBot.add(ev.event_id);
        doneWhenDelivered();
        return;
    }
    if (ev.sender !== human || ev.content?.msgtype !== "m.text" || answered) return;
    answered = true;
    answerId = await intent.sendText(roomId, `echo: ${ev.content.body}`);
    step("answered", roomId, answerId);
    doneWhenDelivered(); // the transaction may have come before the send returned
}));

try {
    // begin() listens and registers the AS's own sender user (which the
    // server already has: M_USER_IN_USE, tolerated by the bot-sdk).
    await appservice.begin();
    await intent.ensureRegistered();
    const whoami = await intent.underlyingClient.getWhoAmI();
    if (whoami.user_id !== intent.userId) fail(`whoami as intent: ${whoami.user_id}, want ${intent.userId}`);
    step("ready", intent.userId);
} catch (e) {
    fail(`start: ${describe(e)}`);
}
