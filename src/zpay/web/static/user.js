// Sign in to "your session keys" with a wallet: discover → connect → sign → submit.
// Solana wallets sign a SIWS message (`solana:signMessage`), EVM wallets an EIP-4361
// message (`personal_sign`). zpay writes the message (its domain, a one-time nonce, an
// expiry) and checks it, the signature and the nonce before opening a session.

import { watchWallets, connect, signMessage, bytesToBase64 } from "/static/wallets.js";

const root = document.getElementById("signin");
const list = document.getElementById("wallets");
const looking = document.getElementById("wallets-looking");
const noWallet = document.getElementById("no-wallet");
const statusBox = document.getElementById("signin-status");
const families = (root.dataset.families || "").split(" ").filter(Boolean);
const FAMILY_LABEL = { solana: "Solana", evm: "Ethereum & EVM" };
const found = new Map(); // family -> wallets
let busy = false;

function say(kind, text) {
  statusBox.className = `notice ${kind}`;
  statusBox.textContent = text;
}

function render() {
  const wallets = families.flatMap((family) => found.get(family) || []);
  list.replaceChildren();
  for (const wallet of wallets) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "wallet-pick";
    button.dataset.wallet = wallet.id;
    if (wallet.icon && /^data:image\/(svg\+xml|png|webp|gif|jpeg);/.test(wallet.icon)) {
      const icon = document.createElement("img");
      icon.src = wallet.icon;
      icon.alt = "";
      icon.width = icon.height = 28;
      button.append(icon);
    } else {
      const mark = document.createElement("span");
      mark.className = "wallet-mark";
      mark.textContent = wallet.name.slice(0, 1).toUpperCase();
      button.append(mark);
    }
    const name = document.createElement("span");
    name.className = "wallet-name";
    name.textContent = wallet.name;
    const family = document.createElement("span");
    family.className = "wallet-family";
    family.textContent = FAMILY_LABEL[wallet.family] || wallet.family;
    button.append(name, family);
    button.addEventListener("click", () => signIn(wallet, button));
    list.append(button);
  }
  if (wallets.length) {
    noWallet.classList.add("hidden");
  } else {
    list.append(looking);
  }
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(answer.detail || `zpay answered ${response.status}`);
    error.code = answer.code || "http_error";
    throw error;
  }
  return answer;
}

async function signIn(wallet, button) {
  if (busy) return;
  busy = true;
  for (const b of list.querySelectorAll("button")) b.disabled = true;
  button.classList.add("selected");
  try {
    say("info", `Connecting to ${wallet.name}…`);
    const address = await connect(wallet);
    const challenge = await postJson("/me/sign-in/challenge", { family: wallet.family, address });
    say("info", `Sign the message in ${wallet.name}. It is free and moves no funds.`);
    const { signature } = await signMessage(wallet, challenge.message);
    const encoded = typeof signature === "string" ? signature : bytesToBase64(signature);
    say("info", "Checking your signature…");
    const session = await postJson("/me/sign-in", { message: challenge.message, signature: encoded });
    say("ok", "Signed in. Opening your session keys…");
    window.location.assign(session.redirect || "/me");
  } catch (err) {
    const text = err.code === "rejected"
      ? "You declined in the wallet, so nothing was signed. Choose a wallet to try again."
      : err.message || String(err);
    say("bad", text);
    statusBox.dataset.code = err.code || "error";
    for (const b of list.querySelectorAll("button")) b.disabled = false;
    button.classList.remove("selected");
    busy = false;
  }
}

for (const family of families) {
  const options = family === "solana" ? { features: ["solana:signMessage"] } : {};
  watchWallets(family, (wallets) => {
    found.set(family, wallets);
    render();
  }, options);
}
setTimeout(() => {
  if (!families.some((family) => (found.get(family) || []).length)) {
    looking.classList.add("hidden");
    noWallet.classList.remove("hidden");
  }
}, 800);
