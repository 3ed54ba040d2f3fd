"""preview.png: map_carto.tif downscaled x1/2 with the truth outlines (thick: drawn by Carto with the class fill)."""
import os
import json
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from osgeo import gdal, osr
gdal.UseExceptions()
D = os.environ["BUILD"] + "/out/"
COL = {"school": (220, 0, 0), "park": (0, 120, 0), "hospital": (200, 0, 200), "clinic": (255, 100, 180),
       "university": (0, 60, 220), "college": (0, 170, 230), "kindergarten": (255, 140, 0), "stadium": (120, 60, 0),
       "pitch": (0, 140, 140)}
truth = json.load(open(D + "truth.geojson"))["features"]
font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", 12)

def make(tif, epsg, scale, out, title):
    ds = gdal.Open(tif); gt = ds.GetGeoTransform()
    arr = np.dstack([ds.GetRasterBand(i + 1).ReadAsArray() for i in range(3)])
    im = Image.fromarray(arr).resize((round(ds.RasterXSize * scale), round(ds.RasterYSize * scale)), Image.LANCZOS)
    s = osr.SpatialReference(); s.ImportFromEPSG(epsg); s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    w = osr.SpatialReference(); w.ImportFromEPSG(4326); w.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    T = osr.CoordinateTransformation(w, s)
    dr = ImageDraw.Draw(im)
    def px(lon, lat):
        x, y, _ = T.TransformPoint(lon, lat)
        return ((x - gt[0]) / gt[1] * scale, (y - gt[3]) / gt[5] * scale)
    for ft in sorted(truth, key=lambda f: -f["properties"]["area_m2"]):
        g, c = ft["geometry"], COL[ft["properties"]["class"]]
        polys = g["coordinates"] if g["type"] == "MultiPolygon" else [g["coordinates"]]
        for poly in polys:
            for ring in poly:
                pts = [px(*xy) for xy in ring]
                dr.line(pts + [pts[0]], fill=c, width=2 if ft["properties"]["in_carto_render"] else 1)
    counts = {k: sum(ft["properties"]["class"] == k for ft in truth) for k in COL}
    canvas = Image.new("RGB", (im.width, im.height + 56), (255, 255, 255))    # legend strip below the map
    canvas.paste(im, (0, 0)); dr = ImageDraw.Draw(canvas)
    dr.text((6, im.height + 3), title, fill=(0, 0, 0), font=font)
    x, y = 6, im.height + 21
    for k in COL:
        label = f"{k} {counts[k]}"
        if x + 28 + dr.textlength(label, font=font) > im.width:
            x, y = 6, y + 16
        dr.line((x, y + 7, x + 16, y + 7), fill=COL[k], width=3); dr.text((x + 20, y), label, fill=(0, 0, 0), font=font)
        x += 26 + int(dr.textlength(label, font=font)) + 8
    im = canvas
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(out, im.size)

make(D + "map_carto.tif", 3857, 0.5, D + "preview.png",
     "map_carto.tif (OSM Carto, z17, shown at 1/2) + truth.geojson outlines, " + os.environ["DESC"])
