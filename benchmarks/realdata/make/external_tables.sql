-- Stand-ins for openstreetmap-carto's external data (normally loaded by get-external-data.py from
-- osmdata.openstreetmap.de / naturalearth, unreachable offline). All five are left EMPTY for every scene (no scene has a coastline inside its window):
--  * simplified_water_polygons (z<10), icesheet_polygons/outlines (Antarctica) and
--    ne_110m_admin_0_boundary_lines_land (z<=3) are never drawn at z17 over the scenes;
--  * water_polygons (the sea, z>=10): the source extract has no natural=coastline way at all (osmx keeps every way
--    that crosses its bbox), so the area has no coastline; the Thames is the OSM natural=water/water=river
--    multipolygon relation 28934, drawn by the style from planet_osm_polygon (it lies just south of the area).
DROP TABLE IF EXISTS simplified_water_polygons, water_polygons, icesheet_polygons, icesheet_outlines,
  ne_110m_admin_0_boundary_lines_land;
CREATE TABLE simplified_water_polygons (way geometry(MultiPolygon, 3857));
CREATE TABLE water_polygons (way geometry(MultiPolygon, 3857));
CREATE TABLE icesheet_polygons (way geometry(MultiPolygon, 3857));
CREATE TABLE icesheet_outlines (way geometry(LineString, 3857), ice_edge text);
CREATE TABLE ne_110m_admin_0_boundary_lines_land (way geometry(LineString, 3857));
CREATE INDEX ON simplified_water_polygons USING gist (way);
CREATE INDEX ON water_polygons USING gist (way);
