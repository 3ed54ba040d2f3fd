#!/bin/sh
# The whole London build (adapted from the Porto make/build.sh), from the source PBF to the deliverables in $BUILD/out.
# Run as root with BUILD=/work/realdata_extra/build, PostgreSQL 15 started and a superuser role `root`.
# The scripts are read from $BUILD/../make.
set -e
cd $BUILD
S=$BUILD/../make
V=/work/.mirror/valhalla+valhalla/repo
C=/work/.mirror/gravitystorm+openstreetmap-carto/repo
# 1. the source: valhalla bench extract of central London (osmx, replication timestamp 2020-07-20T10:31:02Z)
git -C $V show def435072072adaf2647cf6aecc3a81dc18746a5:bench/mjolnir/pbf/london.osm.pbf > london.osm.pbf
echo "7495f6978eb64ba9da1af34aca1a3716e562f79105fa40b765b52e929c7641ff  london.osm.pbf" | sha256sum -c -
/usr/bin/python3 $S/candidates.py > candidates.txt 2>/dev/null
/usr/bin/python3 $S/area.py > /dev/null                       # -> area.json
# 2. import into its own database (the Debian style.xml names `gis`; the copy below names gis_london)
dropdb --if-exists gis_london; createdb gis_london
psql -q -d gis_london -c 'CREATE EXTENSION postgis; CREATE EXTENSION hstore;'
osm2pgsql -G --hstore --slim --drop -d gis_london \
  --style /usr/share/openstreetmap-carto-common/openstreetmap-carto.style \
  --tag-transform-script /usr/share/openstreetmap-carto-common/openstreetmap-carto.lua \
  london.osm.pbf > osm2pgsql.log 2>&1
psql -q -d gis_london -f /usr/share/openstreetmap-carto-common/indexes.sql
psql -q -d gis_london -f $S/external_tables.sql 2>/dev/null
# 3. the style: Debian's compiled style.xml with the postinst's dbname substitution, + upstream v5.7.0 patterns/
rm -rf carto; mkdir -p carto
sed -e"s/\[gis\]/\[gis_london\]/" /usr/share/openstreetmap-carto-common/style.xml > carto/style.xml
ln -s /usr/share/openstreetmap-carto-common/symbols carto/symbols
ln -s /usr/share/fonts/truetype/noto carto/fonts
git -C $C archive v5.7.0 patterns | tar -x -C carto
mkdir -p out
/usr/bin/python3 $S/render_carto.py out/map_carto.tif > render.log 2>&1
# 4. the vector extract for the area with complete ways and multipolygons, and its GDAL conversion.
#    London: margin 0.0008 deg in lon (55 m) and 0.0006 deg in lat (67 m); Porto used 0.0006 deg both ways. The wider
#    E-W margin keeps the corner wedges of the (2.3 deg rotated) UTM 30N satellite grid inside the extract.
B=$(/usr/bin/python3 -c "import json; a=json.load(open('area.json'))['lonlat_bbox']; mx,my=0.0008,0.0006; print(','.join(str(round(v,6)) for v in (a[0]-mx,a[1]-my,a[2]+mx,a[3]+my)))")
osmium extract --strategy smart --set-bounds -b $B london.osm.pbf -o extract.osm.pbf --overwrite
rm -f out/map.gpkg
ogr2ogr -f GPKG out/map.gpkg extract.osm.pbf points lines multipolygons -t_srs EPSG:4326
cp extract.osm.pbf out/extract.osm.pbf
# 5. truth, stand-in imagery, checks, preview
/usr/bin/python3 $S/truth.py > truth.txt 2>/dev/null
SAT_NOISE=4 SAT_JPEG_QUALITY=85 /usr/bin/python3 $S/satellite.py out/satellite.tif 2>/dev/null
/usr/bin/python3 $S/align_check.py 2>/dev/null > alignment.txt
/usr/bin/python3 $S/preview.py
sha256sum out/*
