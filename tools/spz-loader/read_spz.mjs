// Decode a .spz file with @spz-loader/core (Niantic's reference C++ loader built to
// WebAssembly) and print every attribute as JSON: an independent reader for our tests.
//   node read_spz.mjs FILE.spz
import { readFileSync } from "node:fs";

// The package's Node branch imports a stubbed `node:module` and fails; its wasm is
// embedded in the bundle, so the browser branch works under Node.
process.type = "renderer";
const { loadSpz } = await import("@spz-loader/core");

const cloud = await loadSpz(new Uint8Array(readFileSync(process.argv[2])), {
  colorScaleFactor: 1.0,
  unpackOptions: { coordinateSystem: "UNSPECIFIED" },
});
const out = {};
for (const [key, value] of Object.entries(cloud)) {
  out[key] = ArrayBuffer.isView(value) ? Array.from(value) : value;
}
process.stdout.write(JSON.stringify(out));
