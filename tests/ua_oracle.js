// Test oracle: the fields Rybbit stores from ua-parser-js for each user agent.
// Reads a JSON array of user-agent strings on stdin and writes a JSON array of
// {browser, browser_version, browser_full_version, operating_system,
// operating_system_version} on stdout, one per input. The first argument is the
// folder of an unpacked ua-parser-js package (fetched by the tests, never vendored:
// ua-parser-js 2.x is AGPL-3.0 and serves here only as a test-time oracle).
// Rybbit's pageviewQueue stores browser.name, browser.major, os.name and os.version,
// empty strings for what ua-parser-js leaves undefined.
"use strict";
const path = require("path");
const { UAParser } = require(path.resolve(process.argv[2], "src/main/ua-parser.js"));

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map((ua) => {
    const result = UAParser(ua);
    return {
      browser: result.browser.name || "",
      browser_version: result.browser.major || "",
      browser_full_version: result.browser.version || "",
      operating_system: result.os.name || "",
      operating_system_version: result.os.version || "",
    };
  });
  process.stdout.write(JSON.stringify(out));
});
