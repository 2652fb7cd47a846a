// tinymnist in plain JavaScript: the image preparation of `tinymnist predict` (inference.preprocess_bytes,
// with Pillow's Lanczos resize computed as Pillow computes it) and a forward pass over the layer program that
// `tinymnist export --web` writes into model.js. Runs in a browser and in Node (module.exports).
"use strict";

const TinyMNIST = (() => {
  const f32 = Math.fround;

  function decode(b64) {  // base64 float32 -> Float32Array
    const bytes = typeof atob === "function" ? Uint8Array.from(atob(b64), c => c.charCodeAt(0))
                                             : new Uint8Array(Buffer.from(b64, "base64"));
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  }

  function load(model) {  // decode every layer's weights once
    return {...model, layers: model.layers.map(l => {
      const out = {...l};
      for (const key of ["weight", "bias", "scale", "shift"]) if (l[key]) out[key] = decode(l[key]);
      return out;
    })};
  }

  // --- image preparation (as inference.preprocess_bytes) ----------------------------------------------------

  function roundHalfEven(x) {  // Python's round()
    const r = Math.round(x);
    return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
  }

  function median(values) {
    const s = Float32Array.from(values).sort();
    const n = s.length;
    return n % 2 ? s[(n - 1) / 2] : f32((s[n / 2 - 1] + s[n / 2]) / 2);
  }

  function lanczos(x) {
    const sinc = v => { if (v === 0) return 1; v *= Math.PI; return Math.sin(v) / v; };
    return (-3 <= x && x < 3) ? sinc(x) * sinc(x / 3) : 0;
  }

  function coefficients(inSize, outSize) {  // Pillow's precompute_coeffs and normalize_coeffs_8bpc
    const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = 3 * filterscale;
    const rows = [];
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale, ss = 1 / filterscale;
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
      const k = [];
      let ww = 0;
      for (let x = 0; x < xmax; x++) { const w = lanczos((x + xmin - center + 0.5) * ss); k.push(w); ww += w; }
      const fixed = k.map(w => {
        const v = ww !== 0 ? w / ww : w;
        return Math.trunc(v < 0 ? -0.5 + v * 4194304 : 0.5 + v * 4194304);  // 1 << 22 (PRECISION_BITS)
      });
      rows.push({xmin, k: fixed});
    }
    return rows;
  }

  function clip8(ss) { return Math.min(255, Math.max(0, Math.floor(ss / 4194304))); }

  function resize(src, w, h, outW, outH) {  // uint8 (h, w) -> uint8 (outH, outW), Lanczos, as Pillow
    let img = src, width = w, height = h;
    const vert = coefficients(h, outH);
    const first = vert[0].xmin, last = vert[outH - 1].xmin + vert[outH - 1].k.length;
    if (outW !== w) {
      const horiz = coefficients(w, outW), rows = last - first, tmp = new Uint8Array(outW * rows);
      for (let y = 0; y < rows; y++) {
        for (let xx = 0; xx < outW; xx++) {
          const {xmin, k} = horiz[xx];
          let ss = 1 << 21;
          for (let x = 0; x < k.length; x++) ss += img[(y + first) * width + x + xmin] * k[x];
          tmp[y * outW + xx] = clip8(ss);
        }
      }
      img = tmp; width = outW; height = rows;
      for (const v of vert) v.xmin -= first;
    }
    if (outH === h && outW === w) return Uint8Array.from(img);
    if (outH === h) return img;
    const out = new Uint8Array(width * outH);
    for (let yy = 0; yy < outH; yy++) {
      const {xmin, k} = vert[yy];
      for (let xx = 0; xx < width; xx++) {
        let ss = 1 << 21;
        for (let y = 0; y < k.length; y++) ss += img[(y + xmin) * width + xx] * k[y];
        out[yy * width + xx] = clip8(ss);
      }
    }
    return out;
  }

  // RGBA pixels (a canvas's ImageData.data) -> {pixels: Uint8Array(784)} as MNIST was made, or {error}.
  function prepare(rgba, w, h) {
    const gray = new Float32Array(w * h);
    for (let i = 0; i < w * h; i++) {  // alpha over white, then Pillow's "L": (R*19595 + G*38470 + B*7471) >> 16
      const a = rgba[4 * i + 3], over = c => Math.floor((c * a + 255 * (255 - a)) / 255 + 0.5);
      const r = a === 255 ? rgba[4 * i] : over(rgba[4 * i]), g = a === 255 ? rgba[4 * i + 1] : over(rgba[4 * i + 1]);
      const b = a === 255 ? rgba[4 * i + 2] : over(rgba[4 * i + 2]);
      gray[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    }
    const border = [];
    for (let x = 0; x < w; x++) border.push(gray[x]);
    for (let x = 0; x < w; x++) border.push(gray[(h - 1) * w + x]);
    for (let y = 0; y < h; y++) border.push(gray[y * w]);
    for (let y = 0; y < h; y++) border.push(gray[y * w + w - 1]);
    const background = median(border);
    const ink = new Float32Array(w * h);
    let max = 0;
    for (let i = 0; i < w * h; i++) {
      const v = background < 128 ? f32(gray[i] - background) : f32(background - gray[i]);
      ink[i] = Math.max(v, 0); max = Math.max(max, ink[i]);
    }
    if (max < 40) return {error: "the pad looks blank: draw a digit"};
    let top = h, bottom = -1, left = w, right = -1;
    for (let i = 0; i < w * h; i++) {
      ink[i] = f32(f32(ink[i] / max) * 255);
      if (ink[i] > 63.75) {
        const y = Math.floor(i / w), x = i % w;
        top = Math.min(top, y); bottom = Math.max(bottom, y); left = Math.min(left, x); right = Math.max(right, x);
      }
    }
    const ch = bottom - top + 1, cw = right - left + 1, crop = new Uint8Array(ch * cw);
    for (let y = 0; y < ch; y++) for (let x = 0; x < cw; x++) crop[y * cw + x] = ink[(y + top) * w + x + left];
    const scale = 20 / Math.max(ch, cw);
    const sw = Math.max(1, roundHalfEven(cw * scale)), sh = Math.max(1, roundHalfEven(ch * scale));
    const small = resize(crop, cw, ch, sw, sh);
    let total = 0, my = 0, mx = 0;
    for (let y = 0; y < sh; y++) for (let x = 0; x < sw; x++) { const v = small[y * sw + x]; total += v; my += y * v; mx += x * v; }
    const cy = my / total, cx = mx / total;
    let ty = roundHalfEven(14 - cy - 0.5), tx = roundHalfEven(14 - cx - 0.5);
    ty = Math.min(Math.max(ty, 0), 28 - sh); tx = Math.min(Math.max(tx, 0), 28 - sw);
    const pixels = new Uint8Array(784);
    for (let y = 0; y < sh; y++) for (let x = 0; x < sw; x++) pixels[(y + ty) * 28 + x + tx] = small[y * sw + x];
    return {pixels};
  }

  // --- the forward pass ----------------------------------------------------------------------------------

  function conv(t, l) {  // t = {c, h, w, data: Float32Array (c, h, w)}
    const {cin, cout, k, stride, padding, groups, weight, bias} = l;
    const oh = Math.floor((t.h + 2 * padding - k) / stride) + 1, ow = Math.floor((t.w + 2 * padding - k) / stride) + 1;
    const out = new Float32Array(cout * oh * ow), inPer = cin / groups, outPer = cout / groups;
    for (let o = 0; o < cout; o++) {
      const g = Math.floor(o / outPer);
      for (let y = 0; y < oh; y++) for (let x = 0; x < ow; x++) {
        let s = bias[o];
        for (let i = 0; i < inPer; i++) {
          const c = g * inPer + i, wbase = (o * inPer + i) * k * k, cbase = c * t.h * t.w;
          for (let ky = 0; ky < k; ky++) {
            const iy = y * stride + ky - padding;
            if (iy < 0 || iy >= t.h) continue;
            for (let kx = 0; kx < k; kx++) {
              const ix = x * stride + kx - padding;
              if (ix >= 0 && ix < t.w) s += weight[wbase + ky * k + kx] * t.data[cbase + iy * t.w + ix];
            }
          }
        }
        out[(o * oh + y) * ow + x] = s;
      }
    }
    return {c: cout, h: oh, w: ow, data: out};
  }

  function pool(t, k, stride, max) {
    const oh = Math.floor((t.h - k) / stride) + 1, ow = Math.floor((t.w - k) / stride) + 1;
    const out = new Float32Array(t.c * oh * ow);
    for (let c = 0; c < t.c; c++) for (let y = 0; y < oh; y++) for (let x = 0; x < ow; x++) {
      let s = max ? -Infinity : 0;
      for (let ky = 0; ky < k; ky++) for (let kx = 0; kx < k; kx++) {
        const v = t.data[(c * t.h + y * stride + ky) * t.w + x * stride + kx];
        s = max ? Math.max(s, v) : s + v;
      }
      out[(c * oh + y) * ow + x] = max ? s : s / (k * k);
    }
    return {c: t.c, h: oh, w: ow, data: out};
  }

  const LAYERS = {
    conv,
    relu: t => ({...t, data: t.data.map(v => Math.max(v, 0))}),
    affine: (t, l) => ({...t, data: t.data.map((v, i) => v * l.scale[Math.floor(i / (t.h * t.w))] + l.shift[Math.floor(i / (t.h * t.w))])}),
    maxpool: (t, l) => pool(t, l.k, l.stride, true),
    avgpool: (t, l) => pool(t, l.k, l.stride, false),
    gap: t => pool(t, t.h, 1, false),
    flatten: t => ({c: t.c * t.h * t.w, h: 1, w: 1, data: t.data}),
    linear: (t, l) => {
      const out = new Float32Array(l.cout);
      for (let o = 0; o < l.cout; o++) {
        let s = l.bias[o];
        for (let i = 0; i < l.cin; i++) s += l.weight[o * l.cin + i] * t.data[i];
        out[o] = s;
      }
      return {c: l.cout, h: 1, w: 1, data: out};
    },
    logsoftmax: t => {
      const m = Math.max(...t.data);
      const lse = m + Math.log(t.data.reduce((s, v) => s + Math.exp(v - m), 0));
      return {...t, data: t.data.map(v => v - lse)};
    },
  };

  // The ten probabilities of whatever the model returns: raw logits or log-probabilities alike (a softmax of
  // log-probabilities gives them back; a constant shift changes nothing), as `tinymnist predict` computes them.
  function probabilities(outputs) {
    const m = Math.max(...outputs), e = Array.from(outputs, v => Math.exp(v - m));
    const total = e.reduce((s, v) => s + v, 0);
    return e.map(v => v / total);
  }

  // uint8 pixels (784) -> the model's ten outputs (Float32Array(10)), logits or log-probabilities as it returns
  function forward(model, pixels) {
    const mean = f32(model.mean), std = f32(model.std);
    let t = {c: 1, h: 28, w: 28, data: Float32Array.from(pixels, v => f32(f32(v / 255) - mean) / std)};
    for (const l of model.layers) t = LAYERS[l.op](t, l);
    return t.data;
  }

  return {load, prepare, forward, probabilities, resize};
})();

if (typeof module !== "undefined") module.exports = TinyMNIST;
