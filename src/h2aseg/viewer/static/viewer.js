// h2aseg view: one study at a time in NiiVue (CT + PET SUV fused, predicted mask, ground truth), the lesion
// table beside it; a click on a row puts the crosshair on that lesion's centroid. Everything is fetched
// from the local server (same origin). window.viewerState is what the browser test reads.
"use strict";

// prob_mean/prob_max: the network's mean/max probability in the lesion; tta_volume_cv: how much its volume
// varies over the 8 TTA flips (docs/quantify.md). The server sends the rows most confident first.
const COLUMNS = { lesion_id: "#", volume_ml: "ml", suv_max: "SUVmax", suv_mean: "SUVmean", suv_peak: "SUVpeak",
  tlg: "TLG", prob_mean: "p mean", prob_max: "p max", tta_volume_cv: "TTA CV", detected: "in GT" };
const CT_PRESETS = { soft: [400, 40], lung: [1500, -600], bone: [2000, 300] };
const state = {
  caseId: null,
  loaded: 0, // volumes NiiVue reports loaded for the current study
  expected: 0,
  ready: false,
  error: null,
  crosshair: null, // {mm: [x, y, z], vox: [i, j, k]} in the CT's (background volume's) grid
  selectedLesion: null,
  lesionCount: 0,
  mipsLoaded: 0, // MIP images (drawn by the server) the page shows
  cspViolations: [],
};
window.viewerState = state;

document.addEventListener("securitypolicyviolation", (e) => {
  state.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});

const $ = (id) => document.getElementById(id);
const nv = new niivue.Niivue({
  backColor: [0, 0, 0, 1],
  isRadiologicalConvention: true, // patient right on the viewer's left (coronal, axial)
  show3Dcrosshair: true,
  crosshairColor: [0.2, 0.8, 1, 1],
  isColorbar: true,
  multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
  multiplanarLayout: niivue.MULTIPLANAR_TYPE.GRID,
  loadingText: "loading",
});

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(2);
  return String(v);
}

function round3(a) {
  return Array.from(a).slice(0, 3).map((v) => Math.round(v * 1000) / 1000);
}

let worldToVoxel = null; // the CT file's inverse affine (from the server, as nibabel reads it)

function toVoxel(mm) {
  // voxel indices in the CT file's own axis order (NiiVue's frac2vox counts in its RAS-reordered grid)
  return worldToVoxel.slice(0, 3).map((r) => r[0] * mm[0] + r[1] * mm[1] + r[2] * mm[2] + r[3]);
}

function updateCrosshair() {
  if (!nv.volumes.length || !worldToVoxel) return;
  const mm = Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3);
  state.crosshair = { mm: round3(mm), vox: round3(toVoxel(mm)) };
  const m = state.crosshair.mm.map((v) => v.toFixed(1)).join(", ");
  const vx = state.crosshair.vox.map((v) => v.toFixed(1)).join(", ");
  $("location").textContent = `crosshair: ${m} mm (RAS) · CT voxel ${vx}`;
}

nv.onLocationChange = () => updateCrosshair();

function setCtWindow(name) {
  const [w, l] = CT_PRESETS[name];
  if (!nv.volumes.length) return;
  nv.volumes[0].cal_min = l - w / 2;
  nv.volumes[0].cal_max = l + w / 2;
  nv.updateGLVolume();
  document.querySelectorAll(".ct-preset").forEach((b) => {
    b.classList.toggle("active", b.dataset.width === String(w) && b.dataset.level === String(l));
  });
}

function setSuvWindow(min, max) {
  if (nv.volumes.length < 2) return;
  nv.volumes[1].cal_min = min;
  nv.volumes[1].cal_max = max;
  nv.updateGLVolume();
  document.querySelectorAll(".suv-preset").forEach((b) => {
    b.classList.toggle("active", Number(b.dataset.min) === min && Number(b.dataset.max) === max);
  });
}

function overlayIndex(kind) {
  return nv.volumes.findIndex((v) => v.h2asegKind === kind);
}

function showOverlay(kind, on) {
  const i = overlayIndex(kind);
  if (i >= 0) nv.setOpacity(i, on ? 0.5 : 0);
}

function moveToLesion(row, tr) {
  nv.scene.crosshairPos = nv.mm2frac(row.centroid_mm);
  nv.drawScene();
  nv.createOnLocationChange && nv.createOnLocationChange();
  updateCrosshair();
  state.selectedLesion = row.lesion_id;
  document.querySelectorAll("#lesions tbody tr").forEach((r) => r.classList.toggle("selected", r === tr));
}

function lesionTable(lesions) {
  const thead = $("lesions").querySelector("thead");
  const tbody = $("lesions").querySelector("tbody");
  thead.replaceChildren();
  tbody.replaceChildren();
  const src = $("lesion-source");
  src.classList.toggle("error", Boolean(lesions.error));
  if (lesions.error) {
    src.textContent = `no lesion table: ${lesions.error}`;
    return;
  }
  src.textContent = `${lesions.rows.length} lesion(s) · ${lesions.source}`;
  const shown = Object.keys(COLUMNS).filter((c) => lesions.columns.includes(c));
  const head = document.createElement("tr");
  for (const c of shown) {
    const th = document.createElement("th");
    th.textContent = COLUMNS[c];
    th.title = c;
    head.appendChild(th);
  }
  thead.appendChild(head);
  for (const row of lesions.rows) {
    const tr = document.createElement("tr");
    tr.dataset.lesion = String(row.lesion_id);
    for (const c of shown) {
      const td = document.createElement("td");
      td.textContent = fmt(row[c]);
      tr.appendChild(td);
    }
    tr.title = `centroid ${row.centroid_mm.map((v) => v.toFixed(1)).join(", ")} mm: click to go there`;
    tr.addEventListener("click", () => moveToLesion(row, tr));
    tbody.appendChild(tr);
  }
}

function showMips(mips) {
  for (const [view, url] of Object.entries(mips)) {
    const img = $(`mip-${view}`);
    img.onload = () => state.mipsLoaded++;
    img.onerror = () => (img.alt = `${view} MIP: the server could not draw it (open ${url} for why)`);
    img.src = url;
  }
}

function studyList(studies, current) {
  const ol = $("studies");
  ol.replaceChildren();
  for (const s of studies) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = s.page;
    a.textContent = s.case_id;
    li.appendChild(a);
    li.classList.toggle("current", s.case_id === current);
    ol.appendChild(li);
  }
}

function currentCaseId(studies) {
  const m = location.pathname.match(/^\/study\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : studies.length ? studies[0].case_id : null;
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function main() {
  await nv.attachTo("gl");
  nv.setSliceType(nv.sliceTypeMultiplanar);
  const { studies } = await getJson("/api/studies");
  const caseId = currentCaseId(studies);
  studyList(studies, caseId);
  if (caseId === null) throw new Error("no studies");
  const study = await getJson(`/api/study/${encodeURIComponent(caseId)}`);
  state.caseId = study.case_id;
  worldToVoxel = study.ct_world_to_voxel;
  document.title = `${study.case_id} · h2aseg view`;
  $("title").textContent = study.case_id;
  $("position").textContent = `${study.index + 1} / ${study.count}`;
  const go = (id) => id !== null && (location.href = `/study/${encodeURIComponent(id)}`);
  $("prev").disabled = study.prev === null;
  $("next").disabled = study.next === null;
  $("prev").onclick = () => go(study.prev);
  $("next").onclick = () => go(study.next);
  document.addEventListener("keydown", (e) => {
    if (e.key === "n") go(study.next);
    if (e.key === "p") go(study.prev);
  });
  lesionTable(study.lesions);
  state.lesionCount = study.lesions.rows.length;
  showMips(study.mips);

  const v = study.volumes;
  const list = [
    { kind: "ct", url: v.ct.url, name: v.ct.name, colormap: "gray", cal_min: -160, cal_max: 240 },
    { kind: "pet", url: v.pet.url, name: v.pet.name, colormap: "hot", opacity: 0.6, cal_min: 0, cal_max: 10 },
    { kind: "mask", url: v.mask.url, name: v.mask.name, colormap: "red", opacity: 0.5, cal_min: 0.5, cal_max: 1 },
  ];
  if (v.gt) list.push({ kind: "gt", url: v.gt.url, name: v.gt.name, colormap: "green", opacity: 0.5, cal_min: 0.5, cal_max: 1 });
  $("show-gt").disabled = !v.gt;
  state.expected = list.length;
  await nv.loadVolumes(list.map(({ kind, ...opts }) => opts));
  nv.volumes.forEach((vol, i) => (vol.h2asegKind = list[i].kind));
  state.loaded = nv.volumes.length;
  setCtWindow("soft");
  setSuvWindow(0, 10);
  nv.setRenderAzimuthElevation(0, 10);
  updateCrosshair();
  state.ready = state.loaded === state.expected;
}

document.querySelectorAll(".ct-preset").forEach((b) => {
  const name = Object.keys(CT_PRESETS).find(
    (k) => String(CT_PRESETS[k][0]) === b.dataset.width && String(CT_PRESETS[k][1]) === b.dataset.level,
  );
  b.addEventListener("click", () => setCtWindow(name));
});
document.querySelectorAll(".suv-preset").forEach((b) => {
  b.addEventListener("click", () => setSuvWindow(Number(b.dataset.min), Number(b.dataset.max)));
});
$("pet-opacity").addEventListener("input", (e) => {
  const i = overlayIndex("pet");
  if (i >= 0) nv.setOpacity(i, Number(e.target.value));
});
$("show-mask").addEventListener("change", (e) => showOverlay("mask", e.target.checked));
$("show-gt").addEventListener("change", (e) => showOverlay("gt", e.target.checked));

main().catch((e) => {
  state.error = String(e && e.message ? e.message : e);
  $("location").textContent = `error: ${state.error}`;
  $("location").classList.add("error");
});
