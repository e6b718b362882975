// The expert lobby: lists active rooms and raises a visible and audible alert
// when a crew presses "request guidance" (docs/protocol.md, `watch_lobby`).
// One click on a room or an alert joins it as an expert.
// Tests read window.goldenhourLobby.

const ROOMS_POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

const state = { rooms: [], requests: [], alerts: 0, beeps: 0, watching: false, errors: [] };
window.goldenhourLobby = state;

let audio = null; // an AudioContext, once a click has allowed sound

function expertName() {
  return $("expert-name").value.trim() || "Expert";
}

function joinUrl(room) {
  const query = new URLSearchParams({ room, role: "expert", name: expertName() });
  return `viewer.html?${query}`;
}

function beep() {
  state.beeps++;
  if (!audio) return; // the browser allows sound only after a click on the page
  const now = audio.currentTime;
  for (const [start, freq] of [[0, 880], [0.25, 660], [0.5, 880]]) {
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.3, now + start);
    gain.gain.exponentialRampToValueAtTime(0.001, now + start + 0.22);
    osc.connect(gain).connect(audio.destination);
    osc.start(now + start);
    osc.stop(now + start + 0.23);
  }
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren(...state.rooms.map((room) => {
    const item = document.createElement("li");
    const crews = room.peers.filter((p) => p.role === "crew").map((p) => p.name);
    const experts = room.peers.filter((p) => p.role === "expert").length;
    const link = document.createElement("a");
    link.href = joinUrl(room.room);
    link.textContent = room.room;
    link.className = "join";
    item.append(link, ` — crew: ${crews.join(", ") || "none"}, experts: ${experts}`);
    if (room.guidance_requested) {
      item.classList.add("requesting");
      item.append(" — guidance requested");
    }
    return item;
  }));
}

function raiseAlert(request) {
  state.requests.push(request);
  state.alerts++;
  const alert = $("alert");
  alert.hidden = false;
  alert.replaceChildren();
  const text = document.createElement("span");
  text.textContent = `${request.name} in room ${request.room} requests guidance` +
    (request.reason ? `: ${request.reason}` : "");
  const join = document.createElement("a");
  join.href = joinUrl(request.room);
  join.textContent = "Join now";
  join.className = "join-alert";
  alert.append(text, " ", join);
  beep();
  refreshRooms();
}

async function refreshRooms() {
  try {
    const response = await fetch("/api/rooms");
    state.rooms = await response.json();
    renderRooms();
  } catch (error) {
    state.errors.push(String(error));
  }
}

function watch() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "watch_lobby" }));
    state.watching = true;
    $("status").textContent = "watching for guidance requests";
  };
  ws.onmessage = ({ data }) => {
    const message = JSON.parse(data);
    if (message.type === "guidance_requested") raiseAlert(message);
  };
  ws.onclose = () => {
    state.watching = false;
    $("status").textContent = "disconnected; reconnecting";
    setTimeout(watch, 1000);
  };
}

$("enable-sound").onclick = () => {
  audio ??= new AudioContext();
  $("enable-sound").textContent = "sound on";
};
$("expert-name").oninput = renderRooms;
refreshRooms();
setInterval(refreshRooms, ROOMS_POLL_MS);
watch();
