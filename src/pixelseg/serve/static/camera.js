// The page's camera mode: frames go to the server's /camera WebSocket, an alpha matte comes
// back for each, and the page draws the person over a new background (blur, a colour or a
// picture). Two frames are on their way at a time, so that the page encodes and draws one
// while the server segments the other; the next is taken when a matte arrives, so a slow
// server lowers the frame rate instead of building a queue.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const video = $("video");
  const live = $("live");
  const IN_FLIGHT = 2;
  const sent = [];  // the frames on their way (canvases), oldest first: mattes come in order
  const spare = [];  // canvases to reuse
  const person = document.createElement("canvas");  // that frame, cut out by its matte
  const matte = document.createElement("canvas");   // the matte at the model's size
  let stream = null;
  let socket = null;
  let running = false;
  let encoding = Promise.resolve();
  let picture = null;  // the background picture, when one was chosen
  const arrivals = [];  // times (ms) the recent mattes arrived: the frame rate
  // for scripts (tests, benchmarks): frames drawn, the rate over the last 2 seconds, and
  // the median time from taking a frame to drawing it (ms) over the last 30
  window.pixelsegCamera = { frames: 0, fps: 0, errors: 0, latency: 0 };
  const delays = [];

  function say(text) { $("status").textContent = text; }

  // Each start is a new session; handlers of an older one (its socket closing late, a
  // frame still being encoded, a video-frame callback) see that and do nothing.
  let session = 0;

  async function start() {
    if (!navigator.mediaDevices?.getUserMedia) {
      say("this browser cannot open a camera here (the page must be served from localhost or https)");
      return;
    }
    const mine = ++session;
    $("camera-start").disabled = true;
    let opened;
    try {
      opened = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 320 }, height: { ideal: 240 } }, audio: false,
      });
    } catch (error) {
      if (mine === session) {
        say(`the camera could not be opened: ${error.message}`);
        $("camera-start").disabled = false;
      }
      return;
    }
    if (mine !== session) {  // stopped while the browser asked for the camera
      opened.getTracks().forEach((track) => track.stop());
      return;
    }
    stream = opened;
    video.srcObject = stream;
    await video.play();
    waiting = 0;
    watch(mine);
    $("camera").hidden = false;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/camera`);
    socket = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => ws.send(JSON.stringify({
      smooth: Number($("smooth").value), key: $("key").value || undefined,
    }));
    ws.onmessage = (event) => { if (mine === session) received(event); };
    ws.onclose = () => {
      if (mine !== session) return;
      if (running) say("the connection to the server was closed");
      stop();
    };
  }

  function stop() {
    session += 1;
    running = false;
    spare.push(...sent.splice(0));
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close();
    if (stream) stream.getTracks().forEach((track) => track.stop());
    socket = stream = null;
    $("camera-start").disabled = false;
  }

  function received(event) {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.ready) {
        running = true;
        say("");
        for (let i = 1; i < IN_FLIGHT; i++) send();
      } else if (message.error) {
        window.pixelsegCamera.errors += 1;
        say(message.error);
        if (sent.length) spare.push(sent.shift());  // that frame was dropped
      }
    } else {
      const frame = sent.shift();
      draw(event.data, frame);
      spare.push(frame);
    }
    send();
  }

  // Each camera picture is sent once: a send that finds no new picture since the last one
  // waits for the next (requestVideoFrameCallback; browsers without it send what is shown).
  let presented = 0;
  let lastSent = -1;
  let waiting = 0;
  function watch(mine) {
    if (!video.requestVideoFrameCallback) return;
    video.requestVideoFrameCallback((now, meta) => {
      if (mine !== session) return;
      presented = meta.presentedFrames;
      if (waiting > 0 && running) {
        waiting -= 1;
        send();
      }
      watch(mine);
    });
  }

  function send() {
    if (!running) return;
    const fresh = !video.requestVideoFrameCallback || presented !== lastSent;
    if (video.videoWidth === 0 || !fresh) {
      waiting += 1;
      if (!video.requestVideoFrameCallback) requestAnimationFrame(() => { waiting -= 1; send(); });
      return;
    }
    lastSent = presented;
    const frame = spare.pop() || document.createElement("canvas");
    frame.width = video.videoWidth;
    frame.height = video.videoHeight;
    frame.getContext("2d").drawImage(video, 0, 0);
    frame.takenAt = performance.now();
    sent.push(frame);
    const mine = session;
    const ws = socket;
    // encoded one after another, so the frames leave in the order of `sent`
    encoding = encoding.then(() => new Promise((done) => frame.toBlob((blob) => {
      if (mine === session && running) {
        if (blob) {
          ws.send(blob);
        } else {  // not encoded: forget the frame and take another
          sent.splice(sent.indexOf(frame), 1);
          spare.push(frame);
          send();
        }
      }
      done();
    }, "image/jpeg", 0.85)));
  }

  function draw(buffer, frame) {
    const header = new DataView(buffer, 0, 4);
    const h = header.getUint16(0, true);
    const w = header.getUint16(2, true);
    const alpha = new Uint8Array(buffer, 4);
    const pixels = new ImageData(w, h);
    for (let i = 0; i < alpha.length; i++) pixels.data[4 * i + 3] = alpha[i];
    matte.width = w;
    matte.height = h;
    matte.getContext("2d").putImageData(pixels, 0, 0);
    const W = frame.width, H = frame.height;
    person.width = live.width = W;
    person.height = live.height = H;
    const p = person.getContext("2d");
    p.drawImage(frame, 0, 0);
    p.globalCompositeOperation = "destination-in";  // keep the frame where the matte is
    p.imageSmoothingQuality = "high";
    p.drawImage(matte, 0, 0, W, H);
    const ctx = live.getContext("2d");
    background(ctx, W, H, frame);
    ctx.drawImage(person, 0, 0);
    count(frame);
  }

  function background(ctx, W, H, frame) {
    const kind = $("background").value;
    if (kind === "picture" && picture) {  // cover the frame, centred
      const scale = Math.max(W / picture.width, H / picture.height);
      const w = picture.width * scale, h = picture.height * scale;
      ctx.drawImage(picture, (W - w) / 2, (H - h) / 2, w, h);
    } else if (kind === "colour" || kind === "picture") {
      ctx.fillStyle = $("bg-colour").value;
      ctx.fillRect(0, 0, W, H);
    } else {
      ctx.filter = `blur(${Math.round(W / 40)}px)`;
      ctx.drawImage(frame, 0, 0);
      ctx.filter = "none";
    }
  }

  function count(frame) {
    const now = performance.now();
    arrivals.push(now);
    while (arrivals.length && arrivals[0] < now - 2000) arrivals.shift();
    const span = (now - arrivals[0]) / 1000;
    const fps = arrivals.length > 1 && span > 0 ? (arrivals.length - 1) / span : 0;
    window.pixelsegCamera.frames += 1;
    delays.push(now - frame.takenAt);
    if (delays.length > 30) delays.shift();
    window.pixelsegCamera.latency = [...delays].sort((a, b) => a - b)[delays.length >> 1];
    window.pixelsegCamera.fps = fps;
    $("fps").textContent = `${fps.toFixed(1)} fps`;
  }

  $("camera-start").addEventListener("click", start);
  $("camera-stop").addEventListener("click", stop);
  $("smooth").addEventListener("input", () => {
    $("smooth-value").textContent = Number($("smooth").value).toFixed(2);
  });
  $("smooth").addEventListener("change", () => { if (running) { stop(); start(); } });
  $("smooth-value").textContent = Number($("smooth").value).toFixed(2);
  $("background").addEventListener("change", () => {
    $("bg-picture").hidden = $("background").value !== "picture";
    $("bg-colour").hidden = $("background").value === "blur";
  });
  $("bg-picture").addEventListener("change", async (event) => {
    const chosen = event.target.files[0];
    if (chosen) picture = await createImageBitmap(chosen);
  });
})();
