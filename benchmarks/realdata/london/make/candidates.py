"""Candidate windows inside the London extract (valhalla bench london.osm.pbf), with per-class counts of OSM area
features (GDAL OSM driver, multipolygons layer) having >= 50 % of their area inside the window."""
import os
import math, itertools
from osgeo import ogr, gdal
gdal.UseExceptions()
PBF = os.environ["BUILD"] + "/london.osm.pbf"
import osmium
_r = osmium.io.Reader(PBF, osmium.osm.osm_entity_bits.NOTHING); _b = _r.header().box(); _r.close()
COV = (_b.bottom_left.lon, _b.bottom_left.lat, _b.top_right.lon, _b.top_right.lat)   # PBF header bbox (W,S,E,N)
CL = ["school", "park", "hospital", "clinic", "university", "college", "kindergarten", "stadium", "pitch"]

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
        feats.append((c, f.GetField("name"), f.GetField("osm_id") or f.GetField("osm_way_id"), f.GetGeometryRef().Clone()))
print(f"area features in the whole PBF: {len(feats)}: " + " ".join(f"{k}={sum(t[0]==k for t in feats)}" for k in CL))
lat0 = (COV[1] + COV[3]) / 2
kx = 111320 * math.cos(math.radians(lat0)); ky = 111200.0
print(f"PBF header bbox {COV} = {(COV[2]-COV[0])*kx/1000:.2f} km (E-W) x {(COV[3]-COV[1])*ky/1000:.2f} km (N-S)")

def counts(bb):
    ring = ogr.CreateGeometryFromWkt(f"POLYGON(({bb[0]} {bb[1]},{bb[2]} {bb[1]},{bb[2]} {bb[3]},{bb[0]} {bb[3]},{bb[0]} {bb[1]}))")
    c = {k: 0 for k in CL}
    for k, n, i, g in feats:
        if not g.IsValid(): g = g.MakeValid()
        inter = g.Intersection(ring)
        if inter is not None and not inter.IsEmpty() and inter.GetArea() >= 0.5 * g.GetArea(): c[k] += 1
    return c

# London: the source is only 1.45 x 1.39 km, so the window is kept >= max(60 m, 0.0006 deg + 3 m) inside the cut edge
# (so that the delivered extract, area + 0.0006 deg, stays inside the source too), on a 20 m grid
MX = max(60.0, 0.0006 * kx + 3) ; MY = max(60.0, 0.0006 * ky + 3)
res = []
for size in (1.0, 1.1, 1.2, 1.25):
    dx, dy = size * 1000 / kx, size * 1000 / ky
    xs = [COV[0] + MX / kx + i * 20 / kx for i in range(100) if COV[0] + MX / kx + i * 20 / kx + dx <= COV[2] - MX / kx + 1e-9]
    ys = [COV[1] + MY / ky + j * 20 / ky for j in range(100) if COV[1] + MY / ky + j * 20 / ky + dy <= COV[3] - MY / ky + 1e-9]
    best = []
    for x0, y0 in itertools.product(xs, ys):
        c = counts((x0, y0, x0 + dx, y0 + dy))
        best.append((sum(v > 0 for v in c.values()), sum(c.values()), x0, y0, c))
    best.sort(key=lambda t: (-t[0], -t[1]))
    for t in best[:4]:
        print(f"{size:4.2f} km window bbox=({t[2]:.5f},{t[3]:.5f},{t[2]+dx:.5f},{t[3]+dy:.5f}) classes={t[0]} total={t[1]}  "
              + " ".join(f"{k}={v}" for k, v in t[4].items()))
