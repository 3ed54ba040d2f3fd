"""Alignment checks between map_carto.tif (EPSG:3857), satellite.tif (the UTM zone of UTM_EPSG), map.gpkg and truth.geojson
(EPSG:4326). Every coordinate goes through GDAL/PROJ and each file's own geotransform, independently of Mapnik."""
import os
import json, re
import numpy as np
from osgeo import gdal, ogr, osr
gdal.UseExceptions(); ogr.UseExceptions()
B = os.environ["BUILD"] + "/"; D = B + "out/"

def srs(e):
    s = osr.SpatialReference(); s.ImportFromEPSG(e); s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER); return s
WGS, MERC, UTM = srs(4326), srs(3857), srs(int(os.environ["UTM_EPSG"]))

def load(path):
    ds = gdal.Open(path)
    return ds, np.dstack([ds.GetRasterBand(i + 1).ReadAsArray() for i in range(3)]).astype(int)
mds, mimg = load(D + "map_carto.tif"); sds, simg = load(D + "satellite.tif")

def to_px(ds, s, lon, lat):
    x, y, _ = osr.CoordinateTransformation(WGS, s).TransformPoint(lon, lat)
    gt = ds.GetGeoTransform()
    return (x - gt[0]) / gt[1], (y - gt[3]) / gt[5]   # fractional col,row (pixel corner = integer)

def burn(ds, s, geoms, all_touched=False):
    mem = gdal.GetDriverByName("MEM").Create("", ds.RasterXSize, ds.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(ds.GetGeoTransform()); mem.SetProjection(s.ExportToWkt())
    v = ogr.GetDriverByName("Memory").CreateDataSource(""); l = v.CreateLayer("l", WGS, ogr.wkbUnknown)
    for g in geoms:
        f = ogr.Feature(l.GetLayerDefn()); f.SetGeometry(g); l.CreateFeature(f)
    gdal.RasterizeLayer(mem, [1], l, burn_values=[1], options=["ALL_TOUCHED=TRUE"] if all_touched else [])
    return mem.GetRasterBand(1).ReadAsArray().astype(bool)

def best_shift(a, b, r=4):
    """IoU of masks a (image-derived) and b (vector-derived) for integer shifts of b within +-r px."""
    best, res = None, {}
    H, W = a.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            bs = np.zeros_like(b)
            bs[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = b[max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
            inter = (a & bs).sum(); uni = (a | bs).sum(); iou = inter / uni
            res[(dx, dy)] = iou
            if best is None or iou > res[best]: best = (dx, dy)
    return round(float(res[(0, 0)]), 4), best, round(float(res[best]), 4)

def near(img, rgb, tol):
    return (np.abs(img - np.array(rgb)[None, None, :]).max(axis=2) <= tol)

src = gdal.OpenEx(D + "map.gpkg", gdal.OF_VECTOR)
def geoms(layer, where):
    l = src.GetLayerByName(layer); l.SetAttributeFilter(where)
    return [(f.GetGeometryRef().Clone(), f) for f in l if f.GetGeometryRef() is not None]

def component_near(mask, c, r):
    """Keep the 8-connected component (parts closer than 2 px are joined) nearest to the fractional pixel (c, r)."""
    H, W = mask.shape
    dil = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            sh = np.zeros_like(mask)
            sh[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = mask[max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
            dil |= sh
    lab = np.zeros(mask.shape, int); n = 0
    for y0, x0 in zip(*np.nonzero(dil)):
        if lab[y0, x0]: continue
        n += 1; stack = [(y0, x0)]; lab[y0, x0] = n
        while stack:
            y, x = stack.pop()
            for yy in (y - 1, y, y + 1):
                for xx in (x - 1, x, x + 1):
                    if 0 <= yy < H and 0 <= xx < W and dil[yy, xx] and not lab[yy, xx]:
                        lab[yy, xx] = n; stack.append((yy, xx))
    if n == 0: return mask
    yy, xx = np.nonzero(mask)
    if len(yy) == 0: return mask
    d = np.hypot(xx + 0.5 - c, yy + 0.5 - r)
    k = lab[yy[d.argmin()], xx[d.argmin()]]
    return mask & (lab == k)

report = {}
# ---- 1. isolated OSM POI nodes -> the centroid of their Carto icon ----
# Carto 5.7 icon colours: @shop-icon, @gastronomy-icon, @health-color, @amenity-brown, @accommodation-icon
ICON = {"shop": (0xac, 0x39, 0xac)}
ICON.update({k: (0xc7, 0x74, 0x00) for k in ("cafe", "restaurant", "fast_food", "bar", "pub", "ice_cream")})
ICON.update({k: (0xbf, 0x00, 0x00) for k in ("pharmacy", "dentist", "doctors")})
ICON.update({k: (0x73, 0x4a, 0x08) for k in ("bank", "post_office", "library", "police", "theatre", "cinema")})
ICON.update({k: (0x00, 0x92, 0xda) for k in ("hotel", "hostel", "guest_house", "motel")})
pts = []
for g, f in geoms("points", "other_tags LIKE '%\"shop\"=>%' OR other_tags LIKE '%\"amenity\"=>%' OR other_tags LIKE '%\"tourism\"=>%' OR other_tags LIKE '%\"natural\"=>\"tree\"%'"):
    ot = f.GetField("other_tags") or ""
    am = re.search(r'"amenity"=>"([^"]*)"', ot); sh = re.search(r'"shop"=>"([^"]*)"', ot); tu = re.search(r'"tourism"=>"([^"]*)"', ot)
    kind = "shop" if sh else (am.group(1) if am else (tu.group(1) if tu else None))
    pts.append((int(f.GetField("osm_id")), g.GetX(), g.GetY(), kind, f.GetField("name")))
allpx = np.array([to_px(mds, MERC, lon, lat) for _, lon, lat, _, _ in pts])
node_res = []
for i, (oid, lon, lat, kind, name) in enumerate(pts):
    if kind not in ICON: continue
    c, r = allpx[i]
    d = np.hypot(allpx[:, 0] - c, allpx[:, 1] - r); d[i] = 1e9
    if d.min() < 18: continue                       # isolated POIs only (no other POI or tree node within 18 px)
    ci, ri = int(c), int(r)
    if not (10 <= ci < mimg.shape[1] - 10 and 10 <= ri < mimg.shape[0] - 10): continue
    win = near(mimg[ri - 8:ri + 9, ci - 8:ci + 9], ICON[kind], 40)
    win = component_near(win, c - (ci - 8), r - (ri - 8))     # the symbol under the node, not a neighbour or label
    if win.sum() < 8: continue
    yy, xx = np.nonzero(win)
    cx, cy = ci - 8 + xx.mean() + 0.5, ri - 8 + yy.mean() + 0.5   # pixel centres
    node_res.append((oid, kind, name, lon, lat, round(c, 2), round(r, 2), round(cx - c, 2), round(cy - r, 2)))
off = np.array([[n[7], n[8]] for n in node_res]).reshape(-1, 2)
if not len(off): off = np.full((1, 2), np.nan)     # a scene with no isolated POI icon (Campo Grande 2013)
report["carto_icon_nodes"] = dict(n=len(node_res), median_dx=float(np.median(off[:, 0])), median_dy=float(np.median(off[:, 1])),
                                  max_abs_offset_px=float(np.abs(off).max()), within_1px=int((np.hypot(off[:, 0], off[:, 1]) <= 1).sum()),
                                  within_2px=int((np.hypot(off[:, 0], off[:, 1]) <= 2).sum()))
print("1. isolated OSM POI nodes -> map_carto pixel (icon centroid minus predicted position, px):")
for n in node_res:
    print(f"   node {n[0]:>11d} {n[1]:10s} {str(n[2])[:28]:28s} lon {n[3]:.7f} lat {n[4]:.7f} -> col {n[5]:8.2f} row {n[6]:8.2f}  icon offset dx {n[7]:+.2f} dy {n[8]:+.2f}")
print("  ", report["carto_icon_nodes"])

# ---- 2. buildings: Carto building fill vs GDAL-rasterized gpkg buildings (3857 grid) ----
bld = [g for g, f in geoms("multipolygons", "building IS NOT NULL AND building <> 'no'")]
cb = near(mimg, (0xd9, 0xd0, 0xc9), 3) | near(mimg, (0xc4, 0xb6, 0xab), 3)
vb = burn(mds, MERC, bld)
iou0, sh, iou = best_shift(cb, vb)
report["carto_vs_gpkg_buildings"] = dict(iou_at_0=iou0, best_shift_px=sh, best_iou=iou)
print("2. map_carto building colour vs gpkg buildings:", report["carto_vs_gpkg_buildings"])

# ---- 3. truth over map_carto: each class's own Carto fill colour ----
truth = json.load(open(D + "truth.geojson"))["features"]
def tg(classes, only_rendered=True):
    return [ogr.CreateGeometryFromJson(json.dumps(t["geometry"])) for t in truth
            if t["properties"]["class"] in classes and (t["properties"]["in_carto_render"] or not only_rendered)]
for key, classes, rgb in (("park", ["park"], (0xc8, 0xfa, 0xcc)), ("pitch", ["pitch"], (0xaa, 0xe0, 0xcb)),
                          ("societal", ["school", "university", "college", "kindergarten", "hospital", "clinic"], (0xff, 0xff, 0xe5))):
    fill = near(mimg, rgb, 2)
    vt = burn(mds, MERC, tg(classes))
    iou0, sh, iou = best_shift(fill, vt & ~cb)
    report[f"carto_{key}_fill_vs_truth"] = dict(colour="#%02x%02x%02x" % rgb, iou_at_0=iou0, best_shift_px=sh, best_iou=iou,
        fill_px=int(fill.sum()), frac_fill_px_inside_truth=round(float((fill & vt).sum() / max(1, fill.sum())), 3),
        frac_truth_px_with_fill=round(float((fill & vt).sum() / max(1, vt.sum())), 3))
    print(f"3. map_carto {key} fill vs truth {classes}:", report[f"carto_{key}_fill_vs_truth"])

# ---- 4. satellite (UTM) vs truth and vs map_carto ----
green = (simg[..., 1] > simg[..., 0] + 12) & (simg[..., 1] > simg[..., 2] + 12)
vpu = burn(sds, UTM, tg(["park"], False))
iou0, sh, iou = best_shift(green, vpu)
report["satellite_green_vs_truth_parks"] = dict(iou_at_0=iou0, best_shift_px=sh, best_iou=iou,
    frac_truth_park_px_green=round(float((green & vpu).sum() / vpu.sum()), 3))
print("4a. satellite green pixels vs truth parks (UTM grid):", report["satellite_green_vs_truth_parks"])
dark = (simg[..., 1] < 110) & (simg[..., 1] > simg[..., 0] + 15) & (simg[..., 1] > simg[..., 2] + 15)
trees = [(g.GetX(), g.GetY(), int(f.GetField("osm_id"))) for g, f in geoms("points", "other_tags LIKE '%\"natural\"=>\"tree\"%'")]
tpx = np.array([to_px(sds, UTM, x, y) for x, y, _ in trees])
toff = []
for i, (c, r) in enumerate(tpx):
    d = np.hypot(tpx[:, 0] - c, tpx[:, 1] - r); d[i] = 1e9
    if d.min() < 24: continue                       # isolated trees (no other tree within 12 m)
    ci, ri = int(c), int(r)
    if not (12 <= ci < simg.shape[1] - 12 and 12 <= ri < simg.shape[0] - 12): continue
    w = dark[ri - 11:ri + 12, ci - 11:ci + 12]
    if w.sum() < 20: continue
    yy, xx = np.nonzero(w)
    toff.append((ci - 11 + xx.mean() + 0.5 - c, ri - 11 + yy.mean() + 0.5 - r))
toff = np.array(toff).reshape(-1, 2)
if not len(toff): toff = np.full((1, 2), np.nan)   # no isolated tree node (Campo Grande 2013)
report["satellite_tree_nodes"] = dict(n=int(np.isfinite(toff[:, 0]).sum()), median_dx=round(float(np.median(toff[:, 0])), 2), median_dy=round(float(np.median(toff[:, 1])), 2),
                                      max_abs_offset_px=round(float(np.abs(toff).max()), 2),
                                      within_2px=int((np.hypot(toff[:, 0], toff[:, 1]) <= 2).sum()))
print("4b. isolated OSM tree nodes -> satellite crown centroid offset (px at 0.5 m):", report["satellite_tree_nodes"])
gt = mds.GetGeoTransform()
warp = gdal.Warp("", D + "satellite.tif", format="MEM", dstSRS="EPSG:3857", outputBounds=(
    gt[0], gt[3] + mds.RasterYSize * gt[5], gt[0] + mds.RasterXSize * gt[1], gt[3]),
    width=mds.RasterXSize, height=mds.RasterYSize, resampleAlg="near")
wimg = np.dstack([warp.GetRasterBand(i + 1).ReadAsArray() for i in range(3)]).astype(int)
sat_green_m = (wimg[..., 1] > wimg[..., 0] + 12) & (wimg[..., 1] > wimg[..., 2] + 12)
carto_green = near(mimg, (0xc8, 0xfa, 0xcc), 2) | near(mimg, (0xcd, 0xeb, 0xb0), 2) | near(mimg, (0xad, 0xd1, 0x9e), 2) | near(mimg, (0xaa, 0xe0, 0xcb), 2)
iou0, sh, iou = best_shift(carto_green, sat_green_m)
report["satellite_warped_green_vs_carto_green"] = dict(iou_at_0=iou0, best_shift_px=sh, best_iou=iou)
print("4c. satellite green (warped to 3857) vs Carto park/grass/wood/pitch colours:", report["satellite_warped_green_vs_carto_green"])
sat_water = (wimg[..., 2] > wimg[..., 0] + 15) & (wimg[..., 2] < 110) & (wimg[..., 0] > 0)
carto_water = near(mimg, (0xaa, 0xd3, 0xdf), 3)
iou0, sh, iou = best_shift(carto_water, sat_water)
report["satellite_warped_water_vs_carto_water"] = dict(iou_at_0=iou0, best_shift_px=sh, best_iou=iou)
print("4d. satellite water (warped to 3857) vs Carto water colour #aad3df:", report["satellite_warped_water_vs_carto_water"])
# satellite building mask re-derived from map.gpkg in UTM vs the Carto building colour, after warping the UTM mask
ub = burn(sds, UTM, bld).astype(np.uint8)
mem = gdal.GetDriverByName("MEM").Create("", sds.RasterXSize, sds.RasterYSize, 1, gdal.GDT_Byte)
mem.SetGeoTransform(sds.GetGeoTransform()); mem.SetProjection(UTM.ExportToWkt()); mem.GetRasterBand(1).WriteArray(ub)
wds = gdal.Warp("", mem, format="MEM", dstSRS="EPSG:3857", outputBounds=(gt[0], gt[3] + mds.RasterYSize * gt[5], gt[0] + mds.RasterXSize * gt[1], gt[3]),
                width=mds.RasterXSize, height=mds.RasterYSize, resampleAlg="near")
wb = wds.GetRasterBand(1).ReadAsArray().astype(bool)
iou0, sh, iou = best_shift(cb, wb)
report["utm_building_mask_warped_vs_carto_buildings"] = dict(iou_at_0=iou0, best_shift_px=sh, best_iou=iou)
print("4e. building mask on the satellite's UTM grid, warped to 3857, vs Carto building colour:", report["utm_building_mask_warped_vs_carto_buildings"])
json.dump(report, open(B + "alignment.json", "w"), indent=1, default=str)
