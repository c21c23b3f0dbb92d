// The approval page's wallet part. The page (server-rendered) says in words what the user
// approves; this script fetches the bytes the wallet will sign, DECODES them itself and
// compares every field with those words and the key's facts. Only when they agree does it
// offer to connect a wallet and sign; it hands the wallet exactly the bytes it checked,
// checks that the connected account is the key's user wallet, submits the signature to zpay
// and follows the outcome.

import {
  WalletError, base58Encode, base64ToBytes, bytesToBase64, connect, ensureChain,
  sendTransaction, signTransaction, signTypedData, watchWallets,
} from "/static/wallets.js";

const root = document.getElementById("approval");
const facts = JSON.parse(document.getElementById("facts").textContent);
const base = `/approve/${root.dataset.link}`;
const $ = (id) => document.getElementById(id);
const amountBase = BigInt(facts.amount_base_units);

// ------------------------------------------------------------------ money and addresses

/** Base units -> "1,234.50" (zpay.domain.money.display_amount, the same rule). */
export function displayAmount(value, decimals) {
  const negative = value < 0n;
  const abs = negative ? -value : value;
  const scale = 10n ** BigInt(decimals);
  const whole = (abs / scale).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  let frac = decimals ? (abs % scale).toString().padStart(decimals, "0") : "";
  frac = frac.replace(/0+$/, "").padEnd(Math.min(2, decimals), "0");
  return (negative ? "-" : "") + whole + (frac ? `.${frac}` : "");
}

const sameEvm = (a, b) => typeof a === "string" && typeof b === "string" && a.toLowerCase() === b.toLowerCase();
const sameAccount = (a, b) => (facts.family === "evm" ? sameEvm(a, b) : a === b);
const shown = (value) => `${displayAmount(value, facts.decimals)} ${facts.token}`;

class Mismatch extends Error {
  constructor(problems) {
    super(problems.join("; "));
    this.problems = problems;
  }
}

// ------------------------------------------------------------------ Solana

const TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA";
const ATA_PROGRAM = "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL";
const MEMO_PROGRAM = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr";
const SYSTEM_PROGRAM = "11111111111111111111111111111111";
const TRANSFER_CHECKED = 12;
const CREATE_IDEMPOTENT = 1;

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.at = 0;
  }
  byte() {
    if (this.at >= this.bytes.length) throw new Mismatch(["the transaction is truncated"]);
    return this.bytes[this.at++];
  }
  take(n) {
    if (this.at + n > this.bytes.length) throw new Mismatch(["the transaction is truncated"]);
    this.at += n;
    return this.bytes.slice(this.at - n, this.at);
  }
  shortVec() {
    let value = 0;
    for (let i = 0; i < 3; i++) {
      const b = this.byte();
      value |= (b & 0x7f) << (7 * i);
      if (!(b & 0x80)) return value;
    }
    throw new Mismatch(["the transaction is malformed"]);
  }
}

/** A wire-format transaction (legacy or v0): its signatures, the message bytes, and the
 * message decoded (header, account keys, instructions). */
export function parseSolanaTransaction(bytes) {
  const r = new Reader(bytes);
  const signatures = r.shortVec();
  r.take(64 * signatures);
  const start = r.at;
  let version = "legacy";
  if (bytes[r.at] & 0x80) version = r.byte() & 0x7f;
  const required = r.byte();
  r.take(2); // read-only signer / unsigned counts: the programs allowed below never need them
  const keys = [];
  for (let i = 0, n = r.shortVec(); i < n; i++) keys.push(base58Encode(r.take(32)));
  r.take(32); // recent blockhash
  const instructions = [];
  for (let i = 0, n = r.shortVec(); i < n; i++) {
    const program = r.byte();
    const accounts = [...r.take(r.shortVec())];
    const data = r.take(r.shortVec());
    instructions.push({ program, accounts, data });
  }
  if (version !== "legacy" && r.shortVec() !== 0) {
    throw new Mismatch(["it loads accounts from lookup tables, which cannot be checked here"]);
  }
  if (r.at !== bytes.length) throw new Mismatch(["the transaction has trailing bytes"]);
  return { signatures, message: bytes.slice(start), required, keys, instructions };
}

function u64le(data, at) {
  let value = 0n;
  for (let i = 7; i >= 0; i--) value = (value << 8n) | BigInt(data[at + i]);
  return value;
}

function checkSolana(body) {
  const bytes = base64ToBytes(body.approval_transaction);
  const tx = parseSolanaTransaction(bytes);
  const problems = [];
  const key = (index) => {
    if (index >= tx.keys.length) throw new Mismatch(["an instruction names an account the transaction does not list"]);
    return tx.keys[index];
  };
  if (tx.signatures !== tx.required) problems.push("its signature slots do not match its header");
  if (tx.keys[0] !== facts.fee_payer || facts.fee_payer === facts.user_wallet) {
    problems.push("the network fee would not be paid by zpay");
  }
  const signers = tx.keys.slice(0, tx.required);
  if (tx.required !== 2 || !signers.includes(facts.user_wallet)) {
    problems.push("it asks for other signatures than yours and zpay's");
  }
  let transfer = null;
  let created = null;
  for (const ix of tx.instructions) {
    const program = key(ix.program);
    const accounts = ix.accounts.map(key);
    if (program === TOKEN_PROGRAM) {
      if (transfer || ix.data.length !== 10 || ix.data[0] !== TRANSFER_CHECKED || accounts.length !== 4) {
        problems.push("it contains a token instruction other than the one transfer");
        continue;
      }
      const [source, mint, destination, authority] = accounts;
      transfer = { source, mint, destination, authority, amount: u64le(ix.data, 1), decimals: ix.data[9] };
    } else if (program === ATA_PROGRAM) {
      if (created || ix.data.length !== 1 || ix.data[0] !== CREATE_IDEMPOTENT || accounts.length !== 6) {
        problems.push("it contains an unexpected account instruction");
        continue;
      }
      const [payer, account, owner, mint, system, tokenProgram] = accounts;
      created = { payer, account, owner, mint, system, tokenProgram };
    } else if (program !== MEMO_PROGRAM) {
      problems.push(`it calls a program this page does not expect (${program})`);
    }
  }
  if (!transfer) throw new Mismatch([...problems, "it contains no token transfer"]);
  if (transfer.amount !== amountBase) problems.push(`it moves ${shown(transfer.amount)}, not the ${shown(amountBase)} shown`);
  if (transfer.mint !== facts.token_address || transfer.decimals !== facts.decimals) {
    problems.push(`it moves another token than ${facts.token}`);
  }
  if (transfer.authority !== facts.user_wallet) problems.push("the tokens would not come from your wallet");
  if (transfer.destination !== facts.session_token_account) {
    problems.push("the tokens would go to another account than the session wallet's");
  }
  // The token account is the session wallet's: the Associated Token program refuses to run
  // (and the whole transaction with it) unless `account` is derived from `owner` and `mint`.
  if (!created || created.account !== transfer.destination || created.owner !== facts.session_wallet ||
      created.mint !== facts.token_address || created.payer !== facts.fee_payer ||
      created.system !== SYSTEM_PROGRAM || created.tokenProgram !== TOKEN_PROGRAM) {
    problems.push("it does not tie the receiving account to the session wallet");
  }
  if (problems.length) throw new Mismatch(problems);
  return { kind: "solana", bytes, message: tx.message, amount: transfer.amount, to: facts.session_wallet };
}

// ------------------------------------------------------------------ EVM

const EIP712_TYPES = {
  EIP712Domain: [["name", "string"], ["version", "string"], ["chainId", "uint256"], ["verifyingContract", "address"]],
  TransferWithAuthorization: [["from", "address"], ["to", "address"], ["value", "uint256"],
    ["validAfter", "uint256"], ["validBefore", "uint256"], ["nonce", "bytes32"]],
};

function big(value, what) {
  try {
    return BigInt(value);
  } catch {
    throw new Mismatch([`its ${what} is not a number`]);
  }
}

function checkTypedData(body) {
  const td = body.typed_data || {};
  const problems = [];
  const types = td.types || {};
  const sameTypes = Object.keys(types).sort().join() === Object.keys(EIP712_TYPES).sort().join() &&
    Object.entries(EIP712_TYPES).every(([name, fields]) =>
      Array.isArray(types[name]) && types[name].length === fields.length &&
      fields.every(([n, t], i) => types[name][i].name === n && types[name][i].type === t));
  if (td.primaryType !== "TransferWithAuthorization" || !sameTypes) {
    throw new Mismatch(["it is not a USDC transfer authorization (EIP-3009)"]);
  }
  const domain = td.domain || {};
  const message = td.message || {};
  if (big(domain.chainId, "chain id") !== BigInt(facts.chain_id)) problems.push("it is for another network");
  if (!sameEvm(domain.verifyingContract, facts.token_address) || domain.name !== facts.eip712_name ||
      domain.version !== facts.eip712_version) {
    problems.push(`it is for another token than ${facts.token}`);
  }
  const value = big(message.value, "amount");
  if (value !== amountBase) problems.push(`it moves ${shown(value)}, not the ${shown(amountBase)} shown`);
  if (!sameEvm(message.from, facts.user_wallet)) problems.push("the tokens would not come from your wallet");
  if (!sameEvm(message.to, facts.session_wallet)) problems.push("the tokens would go to another address than the session wallet");
  const now = BigInt(Math.floor(Date.now() / 1000));
  if (big(message.validAfter, "start") > now + 300n) problems.push("it only becomes valid later");
  if (problems.length) throw new Mismatch(problems);
  return { kind: "eip712", typedData: td, amount: value, to: message.to };
}

const TRANSFER_SELECTOR = "a9059cbb"; // transfer(address,uint256)

function word(hex, index) {
  return hex.slice(8 + 64 * index, 8 + 64 * (index + 1));
}

function checkEvmTransaction(body) {
  const tx = body.unsigned_transaction || {};
  const problems = [];
  if (big(tx.type, "type") !== 2n) problems.push("it is not an EIP-1559 transaction");
  if (big(tx.chainId, "chain id") !== BigInt(facts.chain_id)) problems.push("it is for another network");
  if (!sameEvm(tx.from, facts.user_wallet)) problems.push("it would not be sent from your wallet");
  if ((tx.accessList || []).length) problems.push("it carries an access list");
  const data = String(tx.data || tx.input || "0x").replace(/^0x/i, "").toLowerCase();
  let amount;
  let to;
  if (facts.token_address === "native") {
    amount = big(tx.value, "value");
    to = tx.to;
    if (data.length) problems.push("it carries call data");
  } else {
    if (!sameEvm(tx.to, facts.token_address)) problems.push(`it calls another contract than the ${facts.token} token`);
    if (big(tx.value, "value") !== 0n) problems.push("it also sends ETH");
    if (data.length !== 8 + 128 || !data.startsWith(TRANSFER_SELECTOR) || !/^0{24}/.test(word(data, 0))) {
      throw new Mismatch([...problems, "it is not a plain token transfer"]);
    }
    to = "0x" + word(data, 0).slice(24);
    amount = BigInt("0x" + word(data, 1));
  }
  if (amount !== amountBase) problems.push(`it moves ${shown(amount)}, not the ${shown(amountBase)} shown`);
  if (!sameEvm(to, facts.session_wallet)) problems.push("the tokens would go to another address than the session wallet");
  if (problems.length) throw new Mismatch(problems);
  const maxFeeWei = big(tx.gas, "gas") * big(tx.maxFeePerGas, "fee");
  return { kind: "evm_transaction", tx, amount, to, maxFeeWei };
}

function check(body) {
  if (body.format !== facts.format) throw new Mismatch(["it is not the kind of approval this page shows"]);
  if (facts.format === "solana_transaction") return checkSolana(body);
  if (facts.format === "eip712") return checkTypedData(body);
  if (facts.format === "evm_transaction") return checkEvmTransaction(body);
  throw new Mismatch(["this page cannot read this kind of approval"]);
}

/** The words on the page must be the facts checked: the amount and both wallets as shown. */
function checkWords(decoded) {
  const text = (id) => (document.querySelector(`[data-testid="${id}"]`)?.firstChild?.textContent || "").trim();
  const problems = [];
  if (text("amount") !== displayAmount(decoded.amount, facts.decimals)) problems.push("the amount shown differs from the transaction's");
  if (!sameAccount(text("session-wallet"), decoded.to)) problems.push("the session wallet shown differs from the transaction's");
  if (text("user-wallet") !== facts.user_wallet) problems.push("the wallet shown differs from the key's");
  if (problems.length) throw new Mismatch(problems);
}

// ------------------------------------------------------------------ page state

function say(kind, text, { spinner = false } = {}) {
  const box = $("status");
  if (!box) return; // a page without the wallet part (in progress): its notice says it
  box.className = `notice ${kind}`;
  box.replaceChildren();
  if (spinner) {
    const spin = document.createElement("span");
    spin.className = "spinner";
    spin.setAttribute("aria-hidden", "true");
    box.append(spin, " ");
  }
  box.append(text);
}

function show(id, visible = true) {
  $(id)?.classList.toggle("hidden", !visible);
}

function actions({ retry = false, renew = false } = {}) {
  show("retry", retry);
  show("renew", renew);
  show("more", retry || renew);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function call(path, method = "GET", body) {
  const init = { method, cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(`${base}${path}`, init);
  let json = {};
  try {
    json = await resp.json();
  } catch {
    json = { code: "http_error", detail: `zpay answered ${resp.status}` };
  }
  return { status: resp.status, ok: resp.ok, body: json };
}

// ------------------------------------------------------------------ the flow

let checked = null; // the approval as decoded and checked: the only thing handed to a wallet
let wallet = null; // the connected wallet, once its account is the user wallet

async function start() {
  const box = $("check");
  let answer;
  try {
    answer = await call("/transaction");
  } catch {
    box.className = "check bad";
    box.textContent = "zpay could not be reached. Reload the page to try again.";
    return;
  }
  if (!answer.ok) {
    box.className = "check bad";
    box.textContent = answer.body.detail || "This approval cannot be loaded.";
    return;
  }
  try {
    checked = decodeAndCompare(answer.body);
  } catch (err) {
    if (!(err instanceof Mismatch)) throw err;
    box.className = "check bad";
    box.dataset.testid = "mismatch";
    box.replaceChildren(
      Object.assign(document.createElement("strong"), {
        textContent: "Do not sign: the transaction zpay handed this page does not match what is shown.",
      }),
      Object.assign(document.createElement("span"), { className: "why", textContent: ` It ${err.problems.join("; ")}.` }),
    );
    $("wallet-card")?.remove();
    return;
  }
  box.className = "check ok";
  box.textContent = `Checked: the transaction your wallet will sign moves exactly ${shown(checked.amount)} ` +
    `from your wallet to the session wallet${checked.kind === "evm_transaction" ? "" : ", and zpay pays the network fee"}.`;
  if (checked.kind === "evm_transaction") {
    const fee = (checked.maxFeeWei + 10n ** 12n - 1n) / 10n ** 12n; // rounded up to 6 decimals
    $("max-fee").textContent = displayAmount(fee, 6);
  }
  watchWallets(facts.family, renderWallets);
  setTimeout(() => {
    if (!$("wallets").children.length) {
      show("no-wallet");
      show("wallets-hint", false);
    }
  }, 800);
}

function decodeAndCompare(body) {
  const decoded = check(body);
  checkWords(decoded);
  return decoded;
}

function renderWallets(wallets) {
  const list = $("wallets");
  if (!wallets.length || !list) return;
  show("no-wallet", false);
  $("wallets-hint").textContent = "Choose the wallet that holds your funds:";
  list.replaceChildren(...wallets.map((w) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "wallet-pick";
    button.dataset.wallet = w.name;
    if (/^data:image\/(svg\+xml|png|webp|gif|jpeg);/.test(w.icon)) {
      const icon = document.createElement("img");
      icon.src = w.icon;
      icon.alt = "";
      button.append(icon);
    }
    button.append(Object.assign(document.createElement("span"), { textContent: `Connect ${w.name}` }));
    button.addEventListener("click", () => onConnect(w));
    return button;
  }));
}

async function onConnect(candidate) {
  wallet = null;
  show("approve", false);
  actions();
  say("info", `Waiting for ${candidate.name}…`, { spinner: true });
  let address;
  try {
    address = await connect(candidate);
  } catch (err) {
    say("bad", err instanceof WalletError && err.code === "rejected"
      ? "You declined the connection in your wallet. Nothing was signed."
      : `${candidate.name} could not connect: ${err.message}`);
    return;
  }
  const account = $("account");
  account.replaceChildren();
  account.append(Object.assign(document.createElement("span"), { className: "small muted", textContent: `${candidate.name} · ` }),
    Object.assign(document.createElement("span"), { className: "mono", textContent: address }));
  show("account");
  if (!sameAccount(address, facts.user_wallet)) {
    account.className = "account bad";
    say("bad", `This approval is for the wallet ${facts.user_wallet}, but ${candidate.name} is connected ` +
      `with ${address}. Switch to that account in your wallet and connect again. Nothing was signed.`);
    $("status").dataset.testid = "wrong-account";
    return;
  }
  account.className = "account ok";
  wallet = candidate;
  $("status").className = "notice hidden";
  $("status").dataset.testid = "status";
  show("approve");
  $("approve").disabled = false;
}

async function sign() {
  if (checked.kind === "solana") {
    const signed = await signTransaction(wallet, checked.bytes, { chain: facts.wallet_chain });
    const back = parseSolanaTransaction(signed).message;
    if (back.length !== checked.message.length || back.some((b, i) => b !== checked.message[i])) {
      throw new Mismatch(["your wallet changed the transaction before signing it"]);
    }
    return { signed_transaction: bytesToBase64(signed) };
  }
  await ensureChain(wallet, facts.chain_id);
  if (checked.kind === "eip712") {
    return { signature: await signTypedData(wallet, checked.typedData), typed_data: checked.typedData };
  }
  const sent = await sendTransaction(wallet, checked.tx);
  return { signed_transaction: sent.signedTransaction };
}

const PENDING = new Set(["approval_pending", "approval_in_flight", "confirmation_timeout"]);

async function onApprove() {
  if (!wallet || !checked) return;
  $("approve").disabled = true;
  actions();
  say("info", `Confirm the request in ${wallet.name}…`, { spinner: true });
  let signed;
  try {
    signed = await sign();
  } catch (err) {
    $("approve").disabled = false;
    if (err instanceof Mismatch) {
      say("bad", `Not submitted: ${err.problems.join("; ")}. Nothing moved.`);
    } else if (err instanceof WalletError && err.code === "rejected") {
      say("bad", "You declined in your wallet. Nothing was signed and nothing moved.");
      $("status").dataset.testid = "rejected";
    } else {
      say("bad", `Your wallet could not sign: ${err.message}`);
    }
    return;
  }
  say("info", "Signed. Sending it to the network and waiting for confirmation…", { spinner: true });
  $("status").dataset.testid = "progress";
  let answer;
  try {
    answer = await call("/submit", "POST", signed);
  } catch {
    return poll();
  }
  if (answer.ok && answer.body.state === "confirmed") return location.reload();
  if (answer.status === 202 || PENDING.has(answer.body.code)) return poll();
  failed(answer.body);
}

function failed(problem) {
  const code = problem.code;
  $("status").dataset.testid = `error-${code}`;
  const messages = {
    approval_expired: "This approval expired before it reached the network. Nothing moved. Ask for a fresh approval to try again.",
    approval_rejected: `The network refused the transfer: does your wallet hold ${shown(amountBase)}? Nothing moved.`,
    approval_mismatch: "zpay refused the signature: what your wallet signed is not the approval shown here. Nothing moved.",
    approval_signature_invalid: "zpay refused the signature: it is not from the wallet this approval is for. Nothing moved.",
    approval_link_expired: "This approval link has expired. Ask for a fresh approval link. Nothing moved.",
    session_key_not_live: "This session key is no longer active: nothing will be taken from your wallet.",
    approval_already_used: "This approval was already used.",
    chain_unavailable: "The network cannot be reached right now. Nothing moved; try again in a moment.",
  };
  say("bad", messages[code] || problem.detail || "Something went wrong. Nothing moved.");
  const renew = code === "approval_expired";
  const retry = ["approval_rejected", "chain_unavailable", "approval_mismatch", "approval_signature_invalid"].includes(code);
  actions({ retry, renew });
  show("approve", !renew && !retry);
  $("approve").disabled = renew || !retry;
}

async function poll() {
  say("info", "Sent. Waiting for the network to confirm it…", { spinner: true });
  if ($("status")) $("status").dataset.testid = "progress";
  for (;;) {
    let answer = null;
    try {
      answer = await call("/status");
    } catch {
      answer = null;
    }
    const state = answer?.body?.state;
    if (state === "confirmed" || state === "lapsed" || state === "closed") return location.reload();
    if (state === "ready") {
      return failed({ code: "approval_rejected" });
    }
    await sleep(1000);
  }
}

async function onRenew(button) {
  button.disabled = true;
  const answer = await call("/renew", "POST");
  if (answer.ok) return location.reload();
  button.disabled = false;
  const box = $("status") || button.parentElement;
  if ($("status")) say("bad", answer.body.detail || "A fresh approval could not be prepared.");
  else box.append(` ${answer.body.detail || ""}`);
}

async function onFaucet(button) {
  button.disabled = true;
  const out = $("faucet-status");
  out.textContent = " Sending test funds…";
  const answer = await call("/faucet", "POST");
  button.disabled = false;
  // The faucet answers decimal strings with every decimal of the token ("25.000000").
  const balance = answer.ok && BigInt(String(answer.body.balance).replace(".", ""));
  out.textContent = answer.ok
    ? ` Sent. Your wallet now holds ${shown(balance)}.`
    : ` ${answer.body.detail || "The faucet failed."}`;
  out.dataset.testid = answer.ok ? "faucet-done" : "faucet-failed";
}

$("approve")?.addEventListener("click", onApprove);
$("retry")?.addEventListener("click", () => {
  actions();
  onApprove();
});
for (const button of document.querySelectorAll("#renew")) button.addEventListener("click", () => onRenew(button));
$("faucet")?.addEventListener("click", (event) => onFaucet(event.currentTarget));

if (root.dataset.state === "ready") start();
if (root.dataset.state === "submitting") poll();
