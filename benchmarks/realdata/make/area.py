"""Area = the chosen candidate window (WIN in the scene's scene.env), snapped inward to the zoom-17
Web Mercator pixel grid (the OSM tile pixel grid)."""
import os
import math, json
R = 6378137.0
ORIGIN = math.pi * R                      # 20037508.342789244
RES = 2 * ORIGIN / (256 * 2 ** 17)        # 1.1943285669558784 m/px at z17
WIN = tuple(float(v) for v in os.environ["WIN"].split(","))   # W,S,E,N (EPSG:4326): the chosen candidate window (scene.env)

def merc(lon, lat):
    return R * math.radians(lon), R * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))

def lonlat(x, y):
    return math.degrees(x / R), math.degrees(2 * math.atan(math.exp(y / R)) - math.pi / 2)

x0, y0 = merc(WIN[0], WIN[1]); x1, y1 = merc(WIN[2], WIN[3])
px0 = math.ceil((x0 + ORIGIN) / RES); px1 = math.floor((x1 + ORIGIN) / RES)
py0 = math.ceil((ORIGIN - y1) / RES); py1 = math.floor((ORIGIN - y0) / RES)   # py counted from top
mx0, mx1 = px0 * RES - ORIGIN, px1 * RES - ORIGIN
my1, my0 = ORIGIN - py0 * RES, ORIGIN - py1 * RES
w, s = lonlat(mx0, my0); e, n = lonlat(mx1, my1)
lat0 = math.radians((s + n) / 2)
area = dict(merc_bbox=[mx0, my0, mx1, my1], res=RES, width=px1 - px0, height=py1 - py0,
            global_px_origin=[px0, py0], tile_origin_z17=[px0 // 256, py0 // 256], lonlat_bbox=[w, s, e, n],
            ground_m_per_px_at_centre=RES * math.cos(lat0),
            ground_size_km=[(px1 - px0) * RES * math.cos(lat0) / 1000, (py1 - py0) * RES * math.cos(lat0) / 1000])
print(json.dumps(area, indent=1))
json.dump(area, open(os.environ["BUILD"] + "/area.json", "w"), indent=1)
