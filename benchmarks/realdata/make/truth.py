"""truth.geojson: the OSM area polygons (from map.gpkg, i.e. GDAL's OSM driver) of every school, park, hospital,
clinic, university, college, kindergarten, stadium and pitch in the area.

in_carto_render is decided by OSM Carto's own SQL: the `landcover` layer query of style.xml, run at z17 for the area
(osm_id added to its select list), must return the object with the class's feature (amenity_school, leisure_park, ...),
which the style fills with the class colour. carto_fill_fraction measures how much of the polygon (inside the area)
actually shows that fill colour in map_carto.tif (buildings, roads, smaller areas and labels are drawn on top)."""
import os
import json, re, subprocess
import numpy as np
from osgeo import gdal, ogr, osr
gdal.UseExceptions(); ogr.UseExceptions()
B = os.environ["BUILD"] + "/"
A = json.load(open(B + "area.json"))
W, S, E, N = A["lonlat_bbox"]
GPKG, OUT, MAP = B + "out/map.gpkg", B + "out/truth.geojson", B + "out/map_carto.tif"
UTM_EPSG = int(os.environ["UTM_EPSG"])          # WGS 84 / UTM zone of the scene (scene.env)
CLASSES = ["school", "park", "hospital", "clinic", "university", "college", "kindergarten", "stadium", "pitch"]
FEATURE = {c: "amenity_" + c for c in ("school", "hospital", "clinic", "university", "college", "kindergarten")}
FEATURE.update(park="leisure_park", stadium="leisure_stadium", pitch="leisure_pitch")
FILL = {"park": (0xc8, 0xfa, 0xcc), "pitch": (0xaa, 0xe0, 0xcb), "stadium": (0xdf, 0xfc, 0xe2)}
for c in ("school", "hospital", "clinic", "university", "college", "kindergarten"):
    FILL[c] = (0xff, 0xff, 0xe5)                   # @societal_amenities

def srs(e):
    s = osr.SpatialReference(); s.ImportFromEPSG(e); s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER); return s
wgs, utm, merc = srs(4326), srs(UTM_EPSG), srs(3857)
to_utm = osr.CoordinateTransformation(wgs, utm)
area = ogr.CreateGeometryFromWkt(f"POLYGON(({W} {S},{E} {S},{E} {N},{W} {N},{W} {S}))")
area_utm = area.Clone(); area_utm.Segmentize(1e-4); area_utm.Transform(to_utm)
edge_utm = area_utm.GetBoundary()

# ---- Carto's landcover layer query (from style.xml), at z17 over the area, with osm_id added ----
x = open(B + "carto/style.xml").read()
lay = x[x.index('<Layer cache-features="true" maximum-scale-denominator="750000" name="landcover"'):]
lay = lay[:lay.index("</Layer>")]
sql = re.search(r'<Parameter name="table"><!\[CDATA\[(.*?)\]\]></Parameter>', lay, re.S).group(1)
sql = re.sub(r"\(SELECT\s+way, name,", "(SELECT osm_id, way, name,", sql, count=1)
sql = re.sub(r"FROM \(SELECT\s+way, COALESCE", "FROM (SELECT osm_id, way, COALESCE", sql, count=1)
assert sql.count("osm_id") == 2, "could not add osm_id to the landcover query"
res, sd = A["res"], A["res"] / 0.00028            # Mapnik: scale_denominator = m/px / 0.28 mm
sql = (sql.replace("!scale_denominator!", repr(sd)).replace("!pixel_width!", repr(res)).replace("!pixel_height!", repr(res)))
mx0, my0, mx1, my1 = A["merc_bbox"]
assert sql.rstrip().endswith("AS features")         # the layer's subquery carries its own alias
q = (f"SELECT features.osm_id, features.feature, features.is_building FROM {sql} "
     f"WHERE features.way && ST_MakeEnvelope({mx0},{my0},{mx1},{my1},3857)")
rows = subprocess.run(["psql", "-d", os.environ["DB"], "-At", "-F", "|", "-c", q], capture_output=True, text=True, check=True).stdout.splitlines()
carto = {}
for r in rows:
    i, feat, isb = r.split("|"); carto.setdefault(int(i), []).append(feat)
print(f"Carto landcover query at z17 (scale denominator {sd:.1f}): {len(rows)} polygons in the area")

# ---- the rendered map, for the visible-fill fraction ----
mds = gdal.Open(MAP); gt = mds.GetGeoTransform()
mimg = np.dstack([mds.GetRasterBand(i + 1).ReadAsArray() for i in range(3)]).astype(int)
def burn(g):
    mem = gdal.GetDriverByName("MEM").Create("", mds.RasterXSize, mds.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(gt); mem.SetProjection(merc.ExportToWkt())
    v = ogr.GetDriverByName("Memory").CreateDataSource(""); l = v.CreateLayer("l", wgs, ogr.wkbUnknown)
    f = ogr.Feature(l.GetLayerDefn()); f.SetGeometry(g); l.CreateFeature(f)
    gdal.RasterizeLayer(mem, [1], l, burn_values=[1])
    return mem.GetRasterBand(1).ReadAsArray().astype(bool)

def parea(g):
    """area of the polygonal part of a geometry (intersections can return collections)"""
    if g is None or g.IsEmpty(): return 0.0
    t = ogr.GT_Flatten(g.GetGeometryType())
    if t in (ogr.wkbPolygon, ogr.wkbMultiPolygon): return g.GetArea()
    if t == ogr.wkbGeometryCollection: return sum(parea(g.GetGeometryRef(i)) for i in range(g.GetGeometryCount()))
    return 0.0

def tag(ot, k):
    m = re.search(r'"%s"=>"([^"]*)"' % re.escape(k), ot or "")
    return m.group(1) if m else None

def klass(f):
    am, le, ot = f.GetField("amenity"), f.GetField("leisure"), f.GetField("other_tags") or ""
    if am in ("school", "university", "college", "kindergarten", "hospital", "clinic"):
        return am
    hc = tag(ot, "healthcare")
    if hc in ("hospital", "clinic"):
        return hc
    if le in ("park", "stadium", "pitch"):
        return le
    return None

def to_multipolygon(g):
    """GEOS MakeValid can return a collection; keep its polygonal part."""
    if ogr.GT_Flatten(g.GetGeometryType()) != ogr.wkbGeometryCollection:
        return g
    mp = ogr.Geometry(ogr.wkbMultiPolygon)
    for i in range(g.GetGeometryCount()):
        p = g.GetGeometryRef(i); t = ogr.GT_Flatten(p.GetGeometryType())
        if t == ogr.wkbPolygon: mp.AddGeometry(p)
        elif t == ogr.wkbMultiPolygon:
            for k in range(p.GetGeometryCount()): mp.AddGeometry(p.GetGeometryRef(k))
    return mp

feats, skipped = [], []
def add(c, otype, oid, name, g, tags, in_gpkg):
    pg_id = oid if otype == "way" else -oid          # osm2pgsql: ways positive, relations negative
    repaired = False
    if not g.IsValid():                            # e.g. a self-touching multipolygon: keep it, repaired by GEOS
        g = to_multipolygon(g.MakeValid()); repaired = True
    gu = g.Clone(); gu.Transform(to_utm)
    a = parea(gu); a_in = parea(gu.Intersection(area_utm))
    if a_in < 10:
        skipped.append((c, otype, oid, name, f"only {a_in:.1f} m2 inside the area")); return
    inside = burn(g)
    fill = (np.abs(mimg - np.array(FILL[c])[None, None, :]).max(axis=2) <= 2)
    feats_c = carto.get(pg_id, [])
    props = {"name": name, "class": c, "osm_id": oid, "osm_type": otype,
             "in_carto_render": FEATURE[c] in feats_c,
             "at_extract_edge": bool(gu.Distance(edge_utm) < 2.0),
             "fraction_inside_area": round(min(1.0, a_in / a), 4),
             "area_m2": round(a, 1),
             "is_building": tags.get("building") not in (None, "no"),
             "in_map_gpkg": in_gpkg,
             "geometry_made_valid": repaired,
             "carto_feature": feats_c[0] if feats_c else None,
             "carto_fill_fraction": round(float((fill & inside).sum() / max(1, inside.sum())), 3),
             "tags": {k: tags[k] for k in ("amenity", "leisure", "landuse", "building", "healthcare", "sport", "operator")
                      if tags.get(k)}}
    feats.append(dict(type="Feature", properties=props, geometry=json.loads(g.ExportToJson())))

# ---- 1. the area polygons as GDAL's OSM driver built them (map.gpkg, multipolygons) ----
ds = gdal.OpenEx(GPKG, gdal.OF_VECTOR)
lyr = ds.GetLayerByName("multipolygons")
lyr.SetSpatialFilter(area)
seen = set()
for f in lyr:
    c = klass(f)
    if not c:
        continue
    if f.GetField("osm_id"):
        oid, otype = int(f.GetField("osm_id")), "relation"
    else:
        oid, otype = int(f.GetField("osm_way_id")), "way"
    ot = f.GetField("other_tags") or ""
    tags = {k: f.GetField(k) for k in ("amenity", "leisure", "landuse", "building", "sport")}
    tags.update(healthcare=tag(ot, "healthcare"), operator=tag(ot, "operator"))
    seen.add((otype, oid))
    add(c, otype, oid, f.GetField("name"), f.GetGeometryRef().Clone(), tags, True)
n_gdal = len(feats)

# ---- 2. cross-check with libosmium's area assembler on the same extract: an OSM area that GDAL does not emit as
#         its own polygon (a tagged closed way that is also an outer member of a multipolygon relation) is added
#         from the extract, with in_map_gpkg = false ----
import osmium
wkb = osmium.geom.WKBFactory()
class Areas(osmium.SimpleHandler):
    def __init__(self):
        super().__init__(); self.found = []
    def area(self, a):
        t = dict(a.tags)
        am, le, hc = t.get("amenity"), t.get("leisure"), t.get("healthcare")
        c = (am if am in ("school", "university", "college", "kindergarten", "hospital", "clinic") else
             hc if hc in ("hospital", "clinic") else le if le in ("park", "stadium", "pitch") else None)
        if not c: return
        key = ("way" if a.from_way() else "relation", a.orig_id())
        if key in seen: return
        g = ogr.CreateGeometryFromWkb(bytes.fromhex(wkb.create_multipolygon(a)))
        if g.Intersects(area):
            self.found.append((c, key, t, g))
ar = Areas(); ar.apply_file(B + "extract.osm.pbf", locations=True)
for c, (otype, oid), t, g in ar.found:
    add(c, otype, oid, t.get("name"), g, t, False)
print(f"{n_gdal} areas from map.gpkg (GDAL), {len(feats) - n_gdal} more found only by libosmium's area assembler:",
      [(ft["properties"]["class"], ft["properties"]["osm_type"], ft["properties"]["osm_id"]) for ft in feats[n_gdal:]])

# nesting: a same-class polygon that lies inside another one (e.g. a hospital building inside a hospital site)
gs = [ogr.CreateGeometryFromJson(json.dumps(ft["geometry"])) for ft in feats]
for i, ft in enumerate(feats):
    par = [feats[j]["properties"]["osm_id"] for j in range(len(feats)) if j != i
           and feats[j]["properties"]["class"] == ft["properties"]["class"]
           and feats[j]["properties"]["area_m2"] > ft["properties"]["area_m2"]
           and gs[j].Intersection(gs[i]).GetArea() > 0.9 * gs[i].GetArea()]
    ft["properties"]["inside_same_class_osm_id"] = par[0] if par else None

feats.sort(key=lambda ft: (CLASSES.index(ft["properties"]["class"]), -ft["properties"]["area_m2"]))
def rnd(o):
    if isinstance(o, float): return round(o, 7)
    if isinstance(o, list): return [rnd(v) for v in o]
    if isinstance(o, dict): return {k: rnd(v) for k, v in o.items()}
    return o
for ft in feats: ft["geometry"] = rnd(ft["geometry"])
fc = {"type": "FeatureCollection", "name": "truth",
      "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
      "features": feats}
json.dump(fc, open(OUT, "w"), ensure_ascii=False)
print("truth features:")
for ft in feats:
    p = ft["properties"]
    print(f"  {p['class']:12s} {p['osm_type']:8s} {p['osm_id']:>10d} {str(p['name'])[:44]:44s} {p['area_m2']:>9.0f} m2 "
          f"bld={p['is_building']!s:5s} edge={p['at_extract_edge']!s:5s} inside={p['fraction_inside_area']:.2f} "
          f"carto={p['in_carto_render']!s:5s} ({p['carto_feature']}) fill={p['carto_fill_fraction']:.2f} gpkg={p['in_map_gpkg']!s:5s} nested_in={p['inside_same_class_osm_id']}")
cnt = {c: sum(ft["properties"]["class"] == c for ft in feats) for c in CLASSES}
print("counts:", cnt, "total", sum(cnt.values()))
print("in_carto_render:", {c: sum(ft["properties"]["class"] == c and ft["properties"]["in_carto_render"] for ft in feats) for c in CLASSES})
print("skipped:", skipped)
