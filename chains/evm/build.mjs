// Rebuilds chains/evm/artifacts/*.json from chains/evm/contracts/*.sol with solcjs
// (the `solc` package pinned in the root package.json). Run: `npm run build:contracts`.
//
// The artifacts are committed so zpay never needs node at run time; the source hash in
// each artifact lets a test notice an artifact that is stale against its source.
import { createHash } from 'node:crypto'
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import solc from 'solc'

const here = dirname(fileURLToPath(import.meta.url))
const contractsDir = join(here, 'contracts')
const artifactsDir = join(here, 'artifacts')

// Cancun, not the compiler's newest default: the token must also deploy on an older
// anvil (e.g. a docker image) and the opcodes it needs are all in Cancun.
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
}

const sources = {}
for (const file of readdirSync(contractsDir).filter((f) => f.endsWith('.sol')).sort()) {
  sources[file] = { content: readFileSync(join(contractsDir, file), 'utf8') }
}

const output = JSON.parse(solc.compile(JSON.stringify({ language: 'Solidity', sources, settings })))
const errors = (output.errors ?? []).filter((e) => e.severity === 'error')
for (const diagnostic of output.errors ?? []) console.error(diagnostic.formattedMessage)
if (errors.length > 0) process.exit(1)

mkdirSync(artifactsDir, { recursive: true })
for (const [file, contracts] of Object.entries(output.contracts)) {
  const sourceSha256 = createHash('sha256').update(sources[file].content).digest('hex')
  for (const [contractName, compiled] of Object.entries(contracts)) {
    const artifact = {
      contractName,
      sourceName: `contracts/${file}`,
      sourceSha256,
      compiler: { name: 'solc', version: solc.version(), settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion } },
      abi: compiled.abi,
      bytecode: '0x' + compiled.evm.bytecode.object,
      deployedBytecode: '0x' + compiled.evm.deployedBytecode.object,
    }
    const target = join(artifactsDir, `${contractName}.json`)
    writeFileSync(target, JSON.stringify(artifact, null, 2) + '\n')
    console.log(`wrote ${target}`)
  }
}
