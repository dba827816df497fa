// The console's front end, under Node: the real Laravel Echo over the real pusher-js,
// configured as a Laravel app configures it, listening the way a Livewire component does.
// Prints one JSON line per thing that happened; the Python test reads them.
//   node echo_listener.mjs '{"port": 8000, "key": "...", "authEndpoint": "...", "runId": 42}'
import Echo from "laravel-echo";
import Pusher from "pusher-js";

const config = JSON.parse(process.argv[2]);
const print = (line) => console.log(JSON.stringify(line));

const echo = new Echo({
  broadcaster: "pusher",
  Pusher,
  key: config.key,
  cluster: "mt1",
  wsHost: "127.0.0.1",
  wsPort: config.port,
  forceTLS: false,
  enabledTransports: ["ws"],
  disableStats: true,
  authEndpoint: config.authEndpoint,
  userAuthentication: { endpoint: config.userAuthEndpoint, transport: "ajax" },
});

echo.connector.pusher.connection.bind("state_change", ({ current }) =>
  print({ kind: "connection", state: current, socketId: echo.socketId() ?? null }),
);
if (config.signIn) echo.connector.pusher.signin();

// What `#[On('echo-private:opspush.run.{runId},.opspush.state')]` does in Livewire.
if (config.runId != null) echo
  .private(`opspush.run.${config.runId}`)
  .listen(".opspush.state", (payload) => print({ kind: "event", event: "opspush.state", payload }))
  .listen(".opspush.end", (payload) => {
    print({ kind: "event", event: "opspush.end", payload });
    if (config.exitOnEnd) {
      echo.disconnect();
      process.exit(0);
    }
  })
  .error((error) => print({ kind: "error", error }));

// The host's own broadcasts (a notification, say) on a channel of its own.
if (config.hostChannel) {
  echo
    .private(config.hostChannel)
    .subscribed(() => print({ kind: "subscribed", channel: config.hostChannel }))
    .listen(".OrderShipped", (payload) => print({ kind: "event", event: "OrderShipped", payload }));
}

// Events the host sends to the signed-in user (Pusher's `send_to_user`): pusher-js subscribes
// `#server-to-user-<id>` itself after the sign-in; its `user.bind` hears them.
if (config.userEvent) {
  const pusher = echo.connector.pusher;
  pusher.connection.bind("message", (message) => {
    const channel = message.channel ?? "";
    if (message.event === "pusher_internal:subscription_succeeded" && channel.startsWith("#")) {
      print({ kind: "subscribed", channel });
    }
  });
  pusher.user.bind(config.userEvent, (payload) =>
    print({ kind: "event", event: config.userEvent, payload }),
  );
}

// A presence channel, as `Echo.join(...)` is used: who is here, who comes and goes, and
// whispers (client events) read with `listenForWhisper` and sent on a line of stdin:
// {"whisper": "typing", "data": {...}}.
let room = null;
if (config.presence) {
  room = echo
    .join(config.presence)
    .here((users) => print({ kind: "here", users }))
    .joining((user) => print({ kind: "joining", user }))
    .leaving((user) => print({ kind: "leaving", user }))
    .listenForWhisper("typing", (payload) => print({ kind: "whisper", payload }))
    .error((error) => print({ kind: "error", error }));
  echo.connector.pusher.connection.bind("message", (message) => {
    if (message.event === "pusher:error") print({ kind: "pusher_error", data: message.data });
  });
}

let pending = "";
process.stdin.on("data", (chunk) => {
  pending += chunk;
  let newline;
  while ((newline = pending.indexOf("\n")) >= 0) {
    const command = JSON.parse(pending.slice(0, newline));
    pending = pending.slice(newline + 1);
    if (command.whisper && room) {
      room.whisper(command.whisper, command.data);
      print({ kind: "whispered" });
    }
  }
});
process.stdin.on("end", () => process.exit(0)); // the test ends us by closing stdin
process.stdin.resume();
