// Compiles contracts/src/*.sol with the pinned solc-js and writes
// contracts/artifacts/<Name>.json ({contractName, compiler, abi, bytecode}).
// Usage: node build.mjs [--check]   (--check compares with the committed artifacts
// and exits 1 on any difference instead of writing).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");
const here = path.dirname(fileURLToPath(import.meta.url));
const srcDir = path.join(here, "src");
const outDir = path.join(here, "artifacts");
const check = process.argv.includes("--check");

const sources = {};
for (const file of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[`src/${file}`] = { content: fs.readFileSync(path.join(srcDir, file), "utf8") };
}

function findImports(importPath) {
  const candidate = path.join(here, "node_modules", importPath);
  if (!candidate.startsWith(path.join(here, "node_modules"))) return { error: `bad import ${importPath}` };
  try {
    return { contents: fs.readFileSync(candidate, "utf8") };
  } catch {
    return { error: `not found: ${importPath}` };
  }
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

let stale = 0;
fs.mkdirSync(outDir, { recursive: true });
for (const [source, contracts] of Object.entries(output.contracts)) {
  if (!(source in sources)) continue; // dependencies (OpenZeppelin) get no artifact of their own
  for (const [name, c] of Object.entries(contracts)) {
    if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts have nothing to deploy
    const artifact = {
      contractName: name,
      sourceName: source,
      compiler: `solc ${solc.version()}`,
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
    };
    const text = `${JSON.stringify(artifact, null, 2)}\n`;
    const target = path.join(outDir, `${name}.json`);
    if (check) {
      const current = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : "";
      if (current !== text) {
        console.error(`stale artifact: ${path.relative(here, target)}`);
        stale += 1;
      }
    } else {
      fs.writeFileSync(target, text);
      console.log(`wrote ${path.relative(here, target)} (${c.evm.bytecode.object.length / 2} bytes)`);
    }
  }
}
process.exit(stale ? 1 : 0);
