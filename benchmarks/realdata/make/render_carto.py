"""Render OSM Carto 5.7 (Debian's compiled style.xml) for the area with python3-mapnik, z17 scale, scale_factor 1."""
import os
import json, sys, time
import mapnik
import numpy as np
from osgeo import gdal, osr
gdal.UseExceptions()

A = json.load(open(os.environ["BUILD"] + "/area.json"))
STYLE = os.environ["BUILD"] + "/carto/style.xml"      # Debian style.xml with dbname gis -> gis_<scene> (the postinst sed)
OUT = sys.argv[1] if len(sys.argv) > 1 else os.environ["BUILD"] + "/out/map_carto.tif"
W, H, RES = A["width"], A["height"], A["res"]
x0, y0, x1, y1 = A["merc_bbox"]

mapnik.register_fonts("/usr/share/fonts")         # python3-mapnik also does this on import
m = mapnik.Map(W, H)
t = time.time()
mapnik.load_map(m, STYLE, False)                   # non-strict: a few fontset faces (Noto Emoji, Noto Sans Syriac Black) are not packaged in Debian 12
print("style loaded in %.1fs, %d layers" % (time.time() - t, len(m.layers)))
m.zoom_to_box(mapnik.Box2d(x0, y0, x1, y1))
print("map scale denominator %.1f (z17 = 4265.5)" % m.scale_denominator(), "scale", m.scale())
assert abs(m.scale() - RES) < 1e-9, m.scale()
im = mapnik.Image(W, H)
t = time.time()
mapnik.render(m, im, 1.0)                          # scale_factor 1
print("rendered in %.1fs" % (time.time() - t))
rgba = np.frombuffer(im.tostring(), dtype=np.uint8).reshape(H, W, 4)
assert rgba[..., 3].min() == 255, "unexpected transparency"
drv = gdal.GetDriverByName("GTiff")
ds = drv.Create(OUT, W, H, 3, gdal.GDT_Byte,
                options=["COMPRESS=DEFLATE", "ZLEVEL=9", "TILED=YES", "PHOTOMETRIC=RGB"])   # no predictor: smaller for flat map colours
ds.SetGeoTransform((x0, RES, 0, y1, 0, -RES))
srs = osr.SpatialReference(); srs.ImportFromEPSG(3857)
ds.SetProjection(srs.ExportToWkt())
for b in range(3):
    ds.GetRasterBand(b + 1).WriteArray(rgba[..., b])
    ds.GetRasterBand(b + 1).SetColorInterpretation([gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand][b])
ds.SetMetadataItem("TIFFTAG_IMAGEDESCRIPTION", "OpenStreetMap Carto 5.7.0 (Debian openstreetmap-carto 5.7.0-1) rendered with Mapnik 3.1 at zoom 17 (scale_factor 1) from " + os.environ["DESC"] + "")
ds.SetMetadataItem("TIFFTAG_COPYRIGHT", "Map data (c) OpenStreetMap contributors, ODbL 1.0")
ds = None
print("wrote", OUT)
