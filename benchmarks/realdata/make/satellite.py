"""satellite.tif: a STAND-IN for aerial imagery (no real imagery can be reached offline). Plain noisy textures painted
from the OSM land cover in map.gpkg, in WGS 84 / UTM (UTM_EPSG) at 0.5 m/px, JPEG-compressed like the
project's own sample image. No labels, no Carto colours."""
import json, math, os, re, sys
import numpy as np
from osgeo import gdal, ogr, osr
gdal.UseExceptions(); ogr.UseExceptions()

B = os.environ["BUILD"] + "/"
A = json.load(open(B + "area.json"))
W, S, E, N = A["lonlat_bbox"]
GPKG = B + "out/map.gpkg"
OUT = sys.argv[1] if len(sys.argv) > 1 else B + "out/satellite.tif"
EPSG, GSD = int(os.environ["UTM_EPSG"]), 0.5
K = 0.8 / GSD                     # texture radii below were tuned at 0.8 m/px (another build); scale them
rng = np.random.default_rng(20261125)
NOISE, QUALITY = float(os.environ.get("SAT_NOISE", 4)), int(os.environ.get("SAT_JPEG_QUALITY", 85))

wgs = osr.SpatialReference(); wgs.ImportFromEPSG(4326); wgs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
utm = osr.SpatialReference(); utm.ImportFromEPSG(EPSG); utm.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
T = osr.CoordinateTransformation(wgs, utm)

# grid: the UTM bounding box of the (densified) area, snapped outward to 0.5 m. The corner wedges outside the
# area (<= ~8 m wide, the UTM grid is rotated ~0.26 deg against lon/lat here) are still inside extract.osm.pbf,
# which was cut 0.0006 deg (~50-67 m) beyond the area, so the whole grid is painted from real data.
area = ogr.CreateGeometryFromWkt(f"POLYGON(({W} {S},{E} {S},{E} {N},{W} {N},{W} {S}))")
area.Segmentize(2e-5); area.Transform(T)
ax0, ax1, ay0, ay1 = area.GetEnvelope()
X0, Y1 = math.floor(ax0 / GSD) * GSD, math.ceil(ay1 / GSD) * GSD
NX, NY = int(math.ceil((ax1 - X0) / GSD)), int(math.ceil((Y1 - ay0) / GSD))
GT = (X0, GSD, 0.0, Y1, 0.0, -GSD)
print(f"grid {NX}x{NY} px, EPSG:{EPSG} origin ({X0}, {Y1}), {GSD} m/px")

def burn(geoms, values=None, dtype=gdal.GDT_Byte, all_touched=False):
    """Rasterize UTM geometries into the grid; returns ndarray."""
    mem = gdal.GetDriverByName("MEM").Create("", NX, NY, 1, dtype)
    mem.SetGeoTransform(GT); mem.SetProjection(utm.ExportToWkt())
    vds = ogr.GetDriverByName("Memory").CreateDataSource("")
    lyr = vds.CreateLayer("l", utm, ogr.wkbUnknown)
    lyr.CreateField(ogr.FieldDefn("v", ogr.OFTInteger))
    for i, g in enumerate(geoms):
        f = ogr.Feature(lyr.GetLayerDefn()); f.SetGeometry(g)
        f.SetField("v", int(values[i]) if values is not None else 1); lyr.CreateFeature(f)
    opts = ["ATTRIBUTE=v"] + (["ALL_TOUCHED=TRUE"] if all_touched else [])
    gdal.RasterizeLayer(mem, [1], lyr, options=opts)
    return mem.GetRasterBand(1).ReadAsArray()

src = gdal.OpenEx(GPKG, gdal.OF_VECTOR)
grid_ll = ogr.CreateGeometryFromWkt(f"POLYGON(({W-0.001} {S-0.001},{E+0.001} {S-0.001},{E+0.001} {N+0.001},{W-0.001} {N+0.001},{W-0.001} {S-0.001}))")
def feats(layer, where):
    lyr = src.GetLayerByName(layer); lyr.SetAttributeFilter(where); lyr.SetSpatialFilter(grid_ll); out = []
    for f in lyr:
        g = f.GetGeometryRef()
        if g is None: continue
        g = g.Clone(); g.Transform(T)
        out.append((f, g))
    lyr.SetAttributeFilter(None); lyr.SetSpatialFilter(None)
    return out

def tag(f, k):
    m = re.search(r'"%s"=>"([^"]*)"' % re.escape(k), f.GetField("other_tags") or "")
    return m.group(1) if m else None

def underground(f):
    t, l = tag(f, "tunnel"), tag(f, "layer")
    try: neg = l is not None and float(l.split(";")[0]) < 0
    except ValueError: neg = False
    return (t not in (None, "no")) or neg or tag(f, "indoor") == "yes" or tag(f, "location") == "underground"

def polys(where):
    return [g for f, g in feats("multipolygons", where)]

# ---------------- class layers ----------------
grass = burn(polys("leisure IN ('park','garden','dog_park','golf_course') OR landuse IN ('grass','meadow','village_green','recreation_ground','cemetery','allotments','flowerbed','orchard','vineyard','farmland') OR \"natural\" IN ('grassland','heath','wetland')"))
scrub = burn(polys("\"natural\" = 'scrub'"))
bare = burn(polys("\"natural\" IN ('bare_rock','scree','shingle','sand','beach') OR leisure = 'playground' OR landuse IN ('construction','brownfield')"))
pitch = burn(polys("leisure = 'pitch'"))
track = burn(polys("leisure = 'track'"))
railgr = burn(polys("landuse = 'railway'"))
water = burn(polys("\"natural\" = 'water' OR landuse IN ('basin','reservoir') OR leisure = 'swimming_pool' OR other_tags LIKE '%\"waterway\"=>\"riverbank\"%' OR other_tags LIKE '%\"waterway\"=>\"dock\"%'"))
paved_area = burn([g for f, g in feats("multipolygons", "amenity IN ('parking','bicycle_parking','disused_parking','marketplace') OR other_tags LIKE '%\"area:highway\"=>%' OR other_tags LIKE '%\"highway\"=>%' OR other_tags LIKE '%\"place\"=>\"square\"%'")
                   if not underground(f) and f.GetField("building") is None])

WIDTH = {"motorway": 16, "trunk": 14, "primary": 14, "primary_link": 8, "secondary": 12, "secondary_link": 8,
         "tertiary": 10, "tertiary_link": 7, "residential": 8, "unclassified": 7, "living_street": 6, "service": 5,
         "construction": 6, "road": 6}
FOOT = {"footway": 2.5, "cycleway": 2.5, "path": 2.0, "trail": 2.0, "steps": 2.5, "pedestrian": 7.0,
        "platform": 3.0, "bridleway": 2.0, "track": 3.0}
roads, foot = [], []
for f, g in feats("lines", "highway IS NOT NULL"):
    if underground(f) or tag(f, "area") == "yes": continue
    h = f.GetField("highway")
    if h in WIDTH: roads.append(g.Buffer(WIDTH[h] / 2, 4))
    elif h in FOOT: foot.append(g.Buffer(FOOT[h] / 2, 4))
rails = [g.Buffer(1.6 if f.GetField("railway") == "rail" else 0.8, 2)
         for f, g in feats("lines", "railway IN ('rail','tram','light_rail','narrow_gauge','funicular')") if not underground(f)]
road = burn(roads); footm = burn(foot); rail = burn(rails)

trees = polys("\"natural\" = 'wood' OR landuse = 'forest'")
trees += [g.Buffer(4.0, 4) for f, g in feats("lines", "other_tags LIKE '%\"natural\"=>\"tree_row\"%'")]
ntree = 0
for f, g in feats("points", "other_tags LIKE '%\"natural\"=>\"tree\"%'"):
    r = 2.5 + 2.0 * ((int(f.GetField("osm_id")) * 2654435761) % 1000) / 1000.0
    trees.append(g.Buffer(r, 8)); ntree += 1
tree = burn(trees)

bl = [(f, g) for f, g in feats("multipolygons", "building IS NOT NULL AND building <> 'no'")]
bid = burn([g for f, g in bl], values=list(range(1, len(bl) + 1)), dtype=gdal.GDT_Int32)
print(f"{len(bl)} buildings, {ntree} tree nodes, {len(roads)} road and {len(foot)} footway segments")

# ---------------- textures ----------------
def blur(a, r):
    """box blur (twice) with radius r px, edges clamped"""
    r = max(1, int(round(r)))
    for _ in range(2):
        for ax in (0, 1):
            p = np.pad(a, [(r + 1, r), (0, 0)] if ax == 0 else [(0, 0), (r + 1, r)], mode="edge")
            c = np.cumsum(p, axis=ax, dtype=np.float64)
            a = ((c[2 * r + 1:] - c[:-2 * r - 1]) if ax == 0 else (c[:, 2 * r + 1:] - c[:, :-2 * r - 1])) / (2 * r + 1)
    return a

def mottle(r, amp):
    m = blur(rng.normal(0, 1, (NY, NX)), r * K)
    return m / (m.std() + 1e-9) * amp

img = np.zeros((NY, NX, 3), np.float64)
def paint(mask, rgb, mot_r=0, mot_amp=0.0):
    mask = mask.astype(bool)
    col = np.array(rgb, float)[None, :]
    img[mask] = col + (mottle(mot_r, mot_amp)[mask][:, None] if mot_r else 0)

paint(np.ones((NY, NX), bool), (158, 152, 140), 12, 10)          # ground: beige-grey urban surface
mix = blur(rng.normal(0, 1, (NY, NX)), 25 * K); mix = (mix - mix.min()) / (mix.max() - mix.min())
img += (mix[..., None] - 0.5) * np.array([-14, -10, -2])        # drift between beige and grey
paint(railgr, (128, 118, 104), 3, 8)
paint(grass, (96, 128, 66), 6, 10)
paint(scrub, (78, 98, 56), 3, 14)
paint(bare, (176, 162, 132), 4, 8)
paint(pitch, (84, 134, 72), 20, 4)
paint(track, (166, 86, 70), 10, 4)
paint(water, (34, 54, 72), 30, 4)                                # roads, bridges and quays are drawn over water
paint(paved_area, (92, 92, 95), 8, 5)
paint(footm, (172, 166, 154), 3, 5)
paint(road, (74, 75, 78), 10, 5)
paint(rail, (88, 80, 72), 2, 6)
paint(tree, (44, 74, 38), 2, 16)
ROOFS = np.array([(112, 112, 114), (138, 136, 133), (164, 160, 155), (96, 93, 91), (122, 86, 72),
                  (142, 98, 80), (152, 114, 94), (76, 76, 80), (182, 178, 172), (104, 98, 92)], float)
bmask = bid > 0
# building shadows: sun from the south, shadows fall ~3 m north and ~1 m east of each building
sh = np.zeros_like(bmask); dy, dx = int(round(3.2 / GSD)), int(round(0.8 / GSD))
sh[:-dy, dx:] = bmask[dy:, :-dx]
shadow = sh & ~bmask
img[shadow] *= 0.62
cols = ROOFS[(np.arange(len(bl) + 1) * 7919) % len(ROOFS)]
img[bmask] = cols[bid[bmask]] + mottle(2, 4)[bmask][:, None]
img += rng.normal(0, NOISE, img.shape)                          # sensor noise
out = np.clip(np.rint(img), 1, 255).astype(np.uint8)

drv = gdal.GetDriverByName("GTiff")
ds = drv.Create(OUT, NX, NY, 3, gdal.GDT_Byte,
                options=["COMPRESS=JPEG", "PHOTOMETRIC=YCBCR", f"JPEG_QUALITY={QUALITY}", "TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"])
ds.SetGeoTransform(GT); ds.SetProjection(utm.ExportToWkt())
for b in range(3):
    band = ds.GetRasterBand(b + 1); band.WriteArray(out[..., b])
ds.SetMetadataItem("TIFFTAG_IMAGEDESCRIPTION", "STAND-IN, NOT REAL IMAGERY: plain noisy textures painted from OpenStreetMap land cover (" + os.environ["DESC"] + ")")
ds.SetMetadataItem("TIFFTAG_COPYRIGHT", "Derived from OpenStreetMap data (c) OpenStreetMap contributors, ODbL 1.0")
ds = None
frac = {k: float(v.astype(bool).mean()) for k, v in dict(building=bmask, tree=tree, grass=grass, water=water, road=road, footway=footm, paved_area=paved_area).items()}
print("wrote", OUT, "class cover (of grid):", {k: round(v, 3) for k, v in frac.items()})
