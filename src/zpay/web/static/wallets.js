// Wallet discovery and signing for zpay's pages. No dependency, no build step.
//
// Solana: the Wallet Standard (`wallet-standard:app-ready` / `wallet-standard:register-wallet`
// events; features `standard:connect`, `solana:signTransaction`, `solana:signMessage`).
// EVM: EIP-6963 (`eip6963:requestProvider` / `eip6963:announceProvider`) and EIP-1193
// `request` (`eth_requestAccounts`, `eth_signTypedData_v4`, `personal_sign`,
// `eth_signTransaction` or `eth_sendTransaction`).
//
// Every wallet is handed back as {id, name, icon, family, raw}; pass it to the functions
// below. Errors thrown by these functions are WalletError with a `code`:
//   "rejected"     the person declined in the wallet (EIP-1193 4001, or a Solana wallet's refusal)
//   "unsupported"  the wallet lacks the feature or method
//   "no_account"   the wallet gave no account
//   "wrong_chain"  the wallet cannot switch to the chain asked for
//   "wallet"       anything else the wallet said (message kept)

export class WalletError extends Error {
  constructor(code, message, cause) {
    super(message);
    this.name = "WalletError";
    this.code = code;
    this.cause = cause;
  }
}

const REJECTED = /reject|denied|declined|cancel/i;

function asWalletError(err) {
  if (err instanceof WalletError) return err;
  const code = err && (err.code ?? err.error?.code);
  const message = (err && (err.message || err.error?.message)) || String(err);
  if (code === 4001 || code === "ACTION_REJECTED" || REJECTED.test(message)) {
    return new WalletError("rejected", "The request was rejected in the wallet.", err);
  }
  if (code === 4200 || code === -32601 || code === -32004) {
    return new WalletError("unsupported", "The wallet does not support this request.", err);
  }
  return new WalletError("wallet", message, err);
}

// ------------------------------------------------------------------ discovery

const solanaWallets = new Map(); // Wallet Standard wallet object -> normalized wallet
const evmWallets = new Map(); // EIP-6963 uuid -> normalized wallet
const listeners = new Set();
let started = false;

function notify() {
  for (const listener of listeners) listener();
}

function isSolanaWallet(wallet) {
  return (
    wallet && wallet.features && wallet.features["standard:connect"] &&
    Array.isArray(wallet.chains) && wallet.chains.some((c) => String(c).startsWith("solana:"))
  );
}

function registerSolana(...wallets) {
  for (const wallet of wallets) {
    if (!isSolanaWallet(wallet) || solanaWallets.has(wallet)) continue;
    solanaWallets.set(wallet, {
      id: `solana:${wallet.name}`,
      name: String(wallet.name),
      icon: String(wallet.icon || ""),
      family: "solana",
      raw: wallet,
      account: null,
    });
  }
  notify();
  return () => {
    for (const wallet of wallets) solanaWallets.delete(wallet);
    notify();
  };
}

function start() {
  if (started) return;
  started = true;
  // Wallet Standard, app side: answer wallets that register later, and tell those already
  // loaded that the app is ready (they call `register` on the api in the event).
  const api = Object.freeze({ register: registerSolana });
  window.addEventListener("wallet-standard:register-wallet", (event) => {
    try {
      event.detail(api);
    } catch (err) {
      console.warn("a wallet failed to register", err);
    }
  });
  window.dispatchEvent(new CustomEvent("wallet-standard:app-ready", { detail: api }));
  // EIP-6963: providers announce themselves when asked, and may announce later too.
  window.addEventListener("eip6963:announceProvider", (event) => {
    const detail = event.detail;
    if (!detail || !detail.info || !detail.provider || typeof detail.provider.request !== "function") {
      return;
    }
    const { info, provider } = detail;
    if (evmWallets.has(info.uuid)) return;
    evmWallets.set(info.uuid, {
      id: `evm:${info.rdns || info.uuid}`,
      name: String(info.name),
      icon: String(info.icon || ""),
      family: "evm",
      raw: provider,
      info,
      account: null,
    });
    notify();
  });
  window.dispatchEvent(new Event("eip6963:requestProvider"));
}

function current(family, features) {
  const pool = family === "solana" ? solanaWallets : family === "evm" ? evmWallets : null;
  if (!pool) throw new WalletError("unsupported", `unknown chain family ${family}`);
  const found = [...pool.values()];
  if (family !== "solana" || !features) return found;
  return found.filter((w) => features.every((f) => w.raw.features[f]));
}

/** The wallets of `chainFamily` ("solana" | "evm") present in this browser. Waits `waitMs`
 * for late announcements. Solana wallets can be filtered on Wallet Standard `features`,
 * e.g. ["solana:signMessage"]. */
export async function discoverWallets(chainFamily, { waitMs = 150, features } = {}) {
  start();
  await new Promise((resolve) => setTimeout(resolve, waitMs));
  return current(chainFamily, features);
}

/** Calls `callback(wallets)` now and whenever a wallet of `chainFamily` appears; returns an
 * unsubscribe function. */
export function watchWallets(chainFamily, callback, { features } = {}) {
  start();
  const listener = () => callback(current(chainFamily, features));
  listeners.add(listener);
  listener();
  return () => listeners.delete(listener);
}

// ------------------------------------------------------------------ connecting

/** Ask the wallet for its account. Returns the address (base58 on Solana, 0x on EVM); the
 * account is kept on `wallet.account` for the signing functions. */
export async function connect(wallet) {
  try {
    if (wallet.family === "solana") {
      const result = await wallet.raw.features["standard:connect"].connect();
      const accounts = (result && result.accounts) || wallet.raw.accounts || [];
      if (!accounts.length) throw new WalletError("no_account", "The wallet gave no account.");
      wallet.account = accounts[0];
      return wallet.account.address;
    }
    const accounts = await wallet.raw.request({ method: "eth_requestAccounts" });
    if (!accounts || !accounts.length) throw new WalletError("no_account", "The wallet gave no account.");
    wallet.account = accounts[0];
    return wallet.account;
  } catch (err) {
    throw asWalletError(err);
  }
}

function solanaFeature(wallet, name) {
  const feature = wallet.raw.features[name];
  if (!feature) throw new WalletError("unsupported", `${wallet.name} cannot ${name.split(":")[1]}.`);
  if (!wallet.account) throw new WalletError("no_account", "Connect the wallet first.");
  return feature;
}

/** EVM: make sure the wallet is on `chainId` (a number), asking it to switch if needed. */
export async function ensureChain(wallet, chainId) {
  const wanted = "0x" + Number(chainId).toString(16);
  try {
    const now = await wallet.raw.request({ method: "eth_chainId" });
    if (BigInt(now) === BigInt(wanted)) return;
    await wallet.raw.request({ method: "wallet_switchEthereumChain", params: [{ chainId: wanted }] });
  } catch (err) {
    const error = asWalletError(err);
    if (error.code === "rejected") throw error;
    throw new WalletError("wrong_chain", `Switch your wallet to chain ${chainId} and try again.`, err);
  }
}

// ------------------------------------------------------------------ signing

/** Solana: sign a wire-format transaction (Uint8Array) with the connected account, WITHOUT
 * sending it. `chain` is the Wallet Standard chain id, e.g. "solana:devnet". Returns the
 * signed transaction's bytes. */
export async function signTransaction(wallet, transaction, { chain } = {}) {
  const feature = solanaFeature(wallet, "solana:signTransaction");
  try {
    const input = { account: wallet.account, transaction };
    // Only a chain the wallet names: some refuse one they do not know (e.g. solana:localnet).
    if (chain && (wallet.account.chains || wallet.raw.chains || []).includes(chain)) input.chain = chain;
    const [output] = await feature.signTransaction(input);
    return new Uint8Array(output.signedTransaction);
  } catch (err) {
    throw asWalletError(err);
  }
}

/** EVM: `eth_signTypedData_v4` of EIP-712 `typedData` (an object) by the connected account.
 * Returns the 0x signature. */
export async function signTypedData(wallet, typedData) {
  if (!wallet.account) throw new WalletError("no_account", "Connect the wallet first.");
  try {
    return await wallet.raw.request({
      method: "eth_signTypedData_v4",
      params: [wallet.account, JSON.stringify(typedData)],
    });
  } catch (err) {
    throw asWalletError(err);
  }
}

/** EVM: have the wallet sign the JSON-RPC transaction `tx`. Prefers `eth_signTransaction`
 * (the raw transaction comes back and the caller decides to broadcast it); wallets that
 * only send (MetaMask) get `eth_sendTransaction`, and the signed transaction is read back
 * from the wallet's node. Returns {signedTransaction: "0x…", hash, sentByWallet}. */
export async function sendTransaction(wallet, tx) {
  if (!wallet.account) throw new WalletError("no_account", "Connect the wallet first.");
  const request = (method, params) => wallet.raw.request({ method, params });
  try {
    const raw = await request("eth_signTransaction", [tx]);
    if (typeof raw === "string") return { signedTransaction: raw, hash: null, sentByWallet: false };
    const signed = raw && (raw.raw || raw.signedTransaction);
    if (signed) return { signedTransaction: signed, hash: null, sentByWallet: false };
  } catch (err) {
    const error = asWalletError(err);
    if (error.code !== "unsupported") throw error;
  }
  try {
    const hash = await request("eth_sendTransaction", [tx]);
    for (let i = 0; i < 120; i++) {
      const found = await request("eth_getTransactionByHash", [hash]);
      if (found) return { signedTransaction: encodeSignedTransaction(found), hash, sentByWallet: true };
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    throw new WalletError("wallet", "The wallet sent the transaction but its node does not show it.");
  } catch (err) {
    throw asWalletError(err);
  }
}

/** Sign a message for sign-in. Solana (`solana:signMessage`): `message` is a string or
 * Uint8Array; returns {signature: Uint8Array, signedMessage: Uint8Array}. EVM
 * (`personal_sign`): returns {signature: "0x…", signedMessage: the string}. */
export async function signMessage(wallet, message) {
  const bytes = typeof message === "string" ? new TextEncoder().encode(message) : message;
  if (wallet.family === "solana") {
    const feature = solanaFeature(wallet, "solana:signMessage");
    try {
      const [output] = await feature.signMessage({ account: wallet.account, message: bytes });
      return {
        signature: new Uint8Array(output.signature),
        signedMessage: new Uint8Array(output.signedMessage || bytes),
      };
    } catch (err) {
      throw asWalletError(err);
    }
  }
  if (!wallet.account) throw new WalletError("no_account", "Connect the wallet first.");
  try {
    const signature = await wallet.raw.request({
      method: "personal_sign",
      params: [bytesToHex(bytes), wallet.account],
    });
    return { signature, signedMessage: message };
  } catch (err) {
    throw asWalletError(err);
  }
}

// ------------------------------------------------------------------ encodings

export function bytesToHex(bytes) {
  return "0x" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export function hexToBytes(hex) {
  const text = String(hex).replace(/^0x/i, "");
  if (text.length % 2 || /[^0-9a-f]/i.test(text)) throw new Error("not hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToBase64(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

export function base64ToBytes(text) {
  const raw = atob(text);
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

export function base58Encode(bytes) {
  let n = 0n;
  for (const b of bytes) n = (n << 8n) | BigInt(b);
  let out = "";
  while (n > 0n) {
    out = B58[Number(n % 58n)] + out;
    n /= 58n;
  }
  for (const b of bytes) {
    if (b !== 0) break;
    out = "1" + out;
  }
  return out;
}

export function base58Decode(text) {
  let n = 0n;
  for (const c of text) {
    const digit = B58.indexOf(c);
    if (digit < 0) throw new Error("not base58");
    n = n * 58n + BigInt(digit);
  }
  const bytes = [];
  while (n > 0n) {
    bytes.unshift(Number(n & 0xffn));
    n >>= 8n;
  }
  for (const c of text) {
    if (c !== "1") break;
    bytes.unshift(0);
  }
  return Uint8Array.from(bytes);
}

// An EIP-1559 transaction as a node returns it (eth_getTransactionByHash), back into the
// signed raw bytes: 0x02 || rlp([chainId, nonce, maxPriorityFeePerGas, maxFeePerGas, gas,
// to, value, data, accessList, yParity, r, s]).
function rlpQuantity(value) {
  let hex = BigInt(value).toString(16);
  if (hex === "0") return new Uint8Array();
  if (hex.length % 2) hex = "0" + hex;
  return hexToBytes(hex);
}

function rlpEncode(item) {
  if (item instanceof Uint8Array) {
    if (item.length === 1 && item[0] < 0x80) return item;
    return concat(rlpLength(item.length, 0x80), item);
  }
  const body = concat(...item.map(rlpEncode));
  return concat(rlpLength(body.length, 0xc0), body);
}

function rlpLength(length, offset) {
  if (length < 56) return Uint8Array.of(offset + length);
  const bytes = rlpQuantity(length);
  return concat(Uint8Array.of(offset + 55 + bytes.length), bytes);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

export function encodeSignedTransaction(tx) {
  if (Number(tx.type) !== 2) throw new WalletError("wallet", "The wallet sent a transaction of another type.");
  const parity = tx.yParity ?? tx.v;
  const fields = [
    rlpQuantity(tx.chainId), rlpQuantity(tx.nonce), rlpQuantity(tx.maxPriorityFeePerGas),
    rlpQuantity(tx.maxFeePerGas), rlpQuantity(tx.gas), hexToBytes(tx.to), rlpQuantity(tx.value),
    hexToBytes(tx.input ?? tx.data ?? "0x"),
    (tx.accessList || []).map((entry) => [hexToBytes(entry.address), entry.storageKeys.map(hexToBytes)]),
    rlpQuantity(parity), rlpQuantity(tx.r), rlpQuantity(tx.s),
  ];
  return bytesToHex(concat(Uint8Array.of(2), rlpEncode(fields)));
}
