"""Candidate windows inside a scene's source extract ($BUILD/source.osm.pbf), with per-class counts of OSM area
features (GDAL OSM driver, multipolygons layer) having >= 50 % of their area inside the window.

Generalised from ../london/make/candidates.py (same class rule and the same >= 50 %-inside count) so that it
works on large extracts: windows of CAND_SIZES km (default 1.0,1.25,1.5) on a CAND_STEP_M grid (default 100 m),
kept >= max(60 m, extract margin + 3 m) inside the data's extent, and windows that touch a `natural=coastline`
way are left out (Carto draws the sea from external water polygons, which are empty offline). Ranking as for
Copenhagen: most school + university + college + kindergarten + park areas, then most classes, then most areas."""
import os
import math, itertools
from osgeo import ogr, gdal
gdal.UseExceptions()
PBF = os.environ["BUILD"] + "/source.osm.pbf"
import osmium
_r = osmium.io.Reader(PBF, osmium.osm.osm_entity_bits.NOTHING); _b = _r.header().box(); _r.close()
if _b.valid():
    COV = (_b.bottom_left.lon, _b.bottom_left.lat, _b.top_right.lon, _b.top_right.lat)   # PBF header bbox (W,S,E,N)
else:                                   # an .osm turned into PBF may carry no bounds: use the nodes' extent
    class _E(osmium.SimpleHandler):
        def __init__(self):
            super().__init__(); self.b = [180, 90, -180, -90]
        def node(self, n):
            b = self.b; x, y = n.location.lon, n.location.lat
            b[0], b[1], b[2], b[3] = min(b[0], x), min(b[1], y), max(b[2], x), max(b[3], y)
    _h = _E(); _h.apply_file(PBF); COV = tuple(_h.b)
CL = ["school", "park", "hospital", "clinic", "university", "college", "kindergarten", "stadium", "pitch"]
RANK = ("school", "university", "college", "kindergarten", "park")

def klass(f):
    am, le, ot = f.GetField("amenity"), f.GetField("leisure"), f.GetField("other_tags") or ""
    if am in ("school", "university", "college", "kindergarten", "hospital", "clinic"): return am
    for hc in ("hospital", "clinic"):
        if f'"healthcare"=>"{hc}"' in ot: return hc
    if le in ("park", "stadium", "pitch"): return le
    return None

ds = gdal.OpenEx(PBF, gdal.OF_VECTOR)
feats = []
for f in ds.GetLayerByName("multipolygons"):
    c = klass(f)
    if c and f.GetGeometryRef() is not None:
        g = f.GetGeometryRef().Clone()
        if not g.IsValid(): g = g.MakeValid()
        feats.append((c, g, g.GetEnvelope(), g.GetArea()))
coast = []
lines = ds.GetLayerByName("lines")
names = [lines.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(lines.GetLayerDefn().GetFieldCount())]
for f in lines:
    nat = f.GetField("natural") if "natural" in names else None
    if (nat == "coastline" or '"natural"=>"coastline"' in (f.GetField("other_tags") or "")) and f.GetGeometryRef():
        g = f.GetGeometryRef().Clone(); coast.append((g, g.GetEnvelope()))
print(f"area features in the whole source: {len(feats)}: " + " ".join(f"{k}={sum(t[0]==k for t in feats)}" for k in CL)
      + f"; coastline ways {len(coast)}")
lat0 = (COV[1] + COV[3]) / 2
kx = 111320 * math.cos(math.radians(lat0)); ky = 111200.0
print(f"extent {COV} = {(COV[2]-COV[0])*kx/1000:.2f} km (E-W) x {(COV[3]-COV[1])*ky/1000:.2f} km (N-S)")

def hit(env, bb):   # OGR envelope (minx, maxx, miny, maxy) vs (W,S,E,N)
    return env[0] <= bb[2] and env[1] >= bb[0] and env[2] <= bb[3] and env[3] >= bb[1]

def counts(bb):
    ring = ogr.CreateGeometryFromWkt(f"POLYGON(({bb[0]} {bb[1]},{bb[2]} {bb[1]},{bb[2]} {bb[3]},{bb[0]} {bb[3]},{bb[0]} {bb[1]}))")
    c = {k: 0 for k in CL}
    for k, g, env, a in feats:
        if not hit(env, bb): continue
        inter = g.Intersection(ring)
        if inter is not None and not inter.IsEmpty() and inter.GetArea() >= 0.5 * a: c[k] += 1
    wet = any(hit(env, bb) and g.Intersects(ring) for g, env in coast)
    return c, wet

MLON, MLAT = float(os.environ.get("MARGIN_LON", 0.0008)), float(os.environ.get("MARGIN_LAT", 0.0006))
MX = max(60.0, MLON * kx + 3); MY = max(60.0, MLAT * ky + 3)
STEP = float(os.environ.get("CAND_STEP_M", 100))
for size in (float(s) for s in os.environ.get("CAND_SIZES", "1.0,1.25,1.5").split(",")):
    dx, dy = size * 1000 / kx, size * 1000 / ky
    nx = int(((COV[2] - COV[0]) * kx - 2 * MX - size * 1000) // STEP) + 1
    ny = int(((COV[3] - COV[1]) * ky - 2 * MY - size * 1000) // STEP) + 1
    best = []
    for i, j in itertools.product(range(max(nx, 0)), range(max(ny, 0))):
        x0, y0 = COV[0] + (MX + i * STEP) / kx, COV[1] + (MY + j * STEP) / ky
        c, wet = counts((x0, y0, x0 + dx, y0 + dy))
        if wet: continue
        best.append((sum(c[k] for k in RANK), sum(v > 0 for v in c.values()), sum(c.values()), x0, y0, c))
    best.sort(key=lambda t: (-t[0], -t[1], -t[2]))
    for t in best[:4]:
        print(f"{size:4.2f} km window bbox=({t[3]:.5f},{t[4]:.5f},{t[3]+dx:.5f},{t[4]+dy:.5f}) ranked={t[0]} classes={t[1]} "
              f"total={t[2]}  " + " ".join(f"{k}={v}" for k, v in t[5].items()))
