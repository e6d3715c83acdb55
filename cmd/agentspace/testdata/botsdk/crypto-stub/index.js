// Stand-in for @matrix-org/matrix-sdk-crypto-nodejs (see ../package.json):
// matrix-bot-sdk requires the module at load time but touches it only when
// end-to-end encryption is enabled, which the test does not do. Any use
// throws, so an accidental crypto path fails loudly instead of silently.
"use strict";

module.exports = new Proxy({}, {
    get(_target, name) {
        // Module-loader and interop probes must not throw.
        if (typeof name === "symbol" || name === "__esModule" || name === "then") {
            return undefined;
        }
        throw new Error(`@matrix-org/matrix-sdk-crypto-nodejs is stubbed in this test (used: ${String(name)})`);
    },
});
