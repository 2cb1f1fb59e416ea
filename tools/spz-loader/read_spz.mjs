// Decode a .spz file with @adobe/spz (Niantic's reference C++ library, nianticlabs/spz,
// built to WebAssembly; reads versions 2-4) and print every attribute as JSON: an
// independent reader for our tests.
//   node read_spz.mjs FILE.spz
// Its GaussianCloud keeps PLY conventions: positions as stored (coordinate system
// UNSPECIFIED: no conversion), scales as logs, rotations x y z w, alphas as logits,
// colours as SH DC coefficients, sh coefficient-major with the colour channel innermost.
import { readFileSync } from "node:fs";
import createSpzModule from "@adobe/spz";

// The library logs to console.log (stdout); keep stdout for the JSON alone.
console.log = (...args) => process.stderr.write(args.join(" ") + "\n");
const spz = await createSpzModule();
const cloud = spz.loadSpzFromBuffer(new Uint8Array(readFileSync(process.argv[2])), {
  to: spz.CoordinateSystem.UNSPECIFIED,
});
if (!cloud || !cloud.numPoints) {
  process.stderr.write("the reference library could not load the file\n");
  process.exit(1);
}
const out = {};
for (const key of ["numPoints", "shDegree", "antialiased", "positions", "scales", "rotations",
                   "alphas", "colors", "sh"]) {
  const value = cloud[key];
  out[key] = ArrayBuffer.isView(value) ? Array.from(value) : value;
}
process.stdout.write(JSON.stringify(out));
